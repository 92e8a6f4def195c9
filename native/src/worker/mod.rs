//! The worker front's data path: what a worker does per request without Python.

pub mod codec;
