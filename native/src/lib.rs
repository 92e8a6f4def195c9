//! `shoal._native`: Shoal's data path in Rust.
//!
//! Python is the control plane (etcd, loading, policy, registration, CLI); this crate carries
//! the per-request work. `py` is the only module that knows Python; everything else is plain
//! Rust, unit-tested with `cargo test`.
//!
//! * `shard`: the shard function (rendezvous hashing, zones, overrides, the vectorised form);
//! * `cachesim`, `lru`, `draw`: the capacity simulator's bulk work (W-TinyLFU replay, LRU
//!   stack distances, inverse-CDF draws),
//!   spread over the cores by `par`;
//! * `resolve`: which version of a model answers a request;
//! * `rpc`: gRPC over HTTP/2 as both fronts serve it (framing, statuses, the accept loop);
//! * `gateway`: the router's data path (gRPC front door, table, policy, quotas, forwarding);
//! * `runtime`: XGBoost and LightGBM predictions through their C APIs, handles owned here;
//! * `worker`: the worker's inference front (decode, validate, batch, predict).

pub mod cachesim;
pub mod draw;
pub mod gateway;
pub mod lru;
pub mod par;
mod py;
pub mod pyfmt;
pub mod resolve;
pub mod rest;
pub mod rpc;
pub mod runtime;
pub mod shard;
pub mod worker;

pub use py::_native;
