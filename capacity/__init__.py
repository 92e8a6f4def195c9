"""Capacity planning (``shoal simulate``): a whole fleet simulated on the production shard
function and cache policy, without a cluster. ``run.simulate`` is the entry point."""
