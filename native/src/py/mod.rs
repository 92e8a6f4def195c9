//! The PyO3 bindings: conversion and calls only, no logic. One submodule per concern.

use pyo3::prelude::*;

mod cachesim;
mod codec;
mod draw;
mod gateway;
mod resolve;
mod runtime;
mod shard;
mod worker;

/// The `shoal._native` module.
#[pymodule]
pub fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    shard::register(m)?;
    cachesim::register(m)?;
    draw::register(m)?;
    resolve::register(m)?;
    gateway::register(m)?;
    runtime::register(m)?;
    runtime::register_onnx(m)?;
    worker::register(m)?;
    codec::register(m)?;
    Ok(())
}
