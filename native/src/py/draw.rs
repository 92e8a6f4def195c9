//! Bindings of `crate::draw`: conversion and calls only; the search runs without the GIL on
//! copies of the arrays.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::draw;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(searchsorted_right, m)?)?;
    Ok(())
}

/// `np.searchsorted(sorted, values, side="right")`, exactly, on every core.
#[pyfunction]
fn searchsorted_right<'py>(
    py: Python<'py>,
    sorted: PyReadonlyArray1<'py, f64>,
    values: PyReadonlyArray1<'py, f64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let sorted: Vec<f64> = sorted.as_array().iter().copied().collect();
    let values: Vec<f64> = values.as_array().iter().copied().collect();
    let out = py
        .detach(|| draw::searchsorted_right(&sorted, &values))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    // Lossless: counts of a slice's entries fit in i64.
    let out: Vec<i64> = out.into_iter().map(|i| i as i64).collect();
    Ok(out.into_pyarray(py))
}
