//! `shoal._native`: Shoal's data path in Rust.
//!
//! Python is the control plane (etcd, loading, policy, registration, CLI); this crate carries
//! the per-request work. `py` is the only module that knows Python; everything else is plain
//! Rust, unit-tested with `cargo test`.

mod py;

pub use py::_native;
