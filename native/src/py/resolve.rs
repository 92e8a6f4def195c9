//! Bindings of `crate::resolve`: conversion and calls only.

use std::collections::{BTreeMap, HashMap};

use pyo3::exceptions::{PyLookupError, PyValueError};
use pyo3::prelude::*;

use crate::resolve::{resolve, Routes};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(resolve_version, m)?)?;
    Ok(())
}

/// Resolves `requested` against one model's routes; `u` is the split's draw (used only when
/// the traffic split decides). Raises `LookupError` (the reference's `NotFound`) or
/// `ValueError` with the reference's message.
#[pyfunction]
fn resolve_version(
    full_name: &str,
    versions: &Bound<'_, PyAny>,
    aliases: HashMap<String, u64>,
    traffic: HashMap<u64, u32>,
    requested: &str,
    u: f64,
) -> PyResult<(u64, String)> {
    let versions = versions
        .try_iter()?
        .map(|v| Ok((v?.extract::<u64>()?, ())))
        .collect::<PyResult<BTreeMap<u64, ()>>>()?;
    let routes = Routes::new(versions, aliases, traffic);
    match resolve(&routes, full_name, requested, || u) {
        Ok((version, _, via)) => Ok((version, via.to_string())),
        Err(e) if e.is_not_found() => Err(PyLookupError::new_err(e.to_string())),
        Err(e) => Err(PyValueError::new_err(e.to_string())),
    }
}
