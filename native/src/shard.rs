//! The shard function (see DESIGN.md, "Placement: shuffle sharding").
