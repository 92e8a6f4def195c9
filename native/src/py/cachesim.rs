//! Bindings of `crate::cachesim`: conversion and calls only; the replay runs without the GIL
//! on copies of the arrays (which Python could write to meanwhile).

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cachesim;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(tinylfu_replay, m)?)?;
    Ok(())
}

/// Hits of every request replayed through one W-TinyLFU cache of `budget` bytes per stream;
/// stream `i` is requests `bounds[i]..bounds[i + 1]` (time order), `sizes` per request.
#[pyfunction]
#[pyo3(signature = (items, sizes, bounds, budget, window=0.01, protected=0.8, width=4096))]
#[allow(clippy::too_many_arguments)]
fn tinylfu_replay<'py>(
    py: Python<'py>,
    items: PyReadonlyArray1<'py, u64>,
    sizes: PyReadonlyArray1<'py, u64>,
    bounds: PyReadonlyArray1<'py, i64>,
    budget: u64,
    window: f64,
    protected: f64,
    width: usize,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let items = items.as_slice()?.to_vec();
    let sizes = sizes.as_slice()?.to_vec();
    if items.len() != sizes.len() {
        return Err(PyValueError::new_err(format!(
            "{} items but {} sizes",
            items.len(),
            sizes.len()
        )));
    }
    let mut b = Vec::with_capacity(bounds.len()?);
    let mut last = 0usize;
    for &x in bounds.as_slice()? {
        let x = usize::try_from(x)
            .ok()
            .filter(|&x| x >= last && x <= items.len())
            .ok_or_else(|| {
                PyValueError::new_err("bounds must be non-decreasing positions within the items")
            })?;
        b.push(x);
        last = x;
    }
    if !(0.0..=1.0).contains(&window) || !(0.0..=1.0).contains(&protected) {
        return Err(PyValueError::new_err(
            "window and protected are fractions in [0, 1]",
        ));
    }
    let hits = py.detach(|| cachesim::replay(&items, &sizes, &b, budget, window, protected, width));
    Ok(hits.into_pyarray(py))
}
