//! Bindings of `crate::cachesim`: conversion and calls only; the replays run without the GIL
//! on copies of the arrays (which Python could write to meanwhile).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::cachesim::{self, Params, Prepared, ReplayError};
use crate::lru;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(tinylfu_replay, m)?)?;
    m.add_function(wrap_pyfunction!(tinylfu_hit_counts, m)?)?;
    m.add_function(wrap_pyfunction!(lru_stack_distances, m)?)?;
    Ok(())
}

fn value_error(e: ReplayError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Stream bounds as positions (negative ones are errors, as are decreasing ones).
fn positions(bounds: &PyReadonlyArray1<'_, i64>) -> PyResult<Vec<usize>> {
    bounds
        .as_array()
        .iter()
        .map(|&x| usize::try_from(x).map_err(|_| value_error(ReplayError::Bounds)))
        .collect()
}

fn copied<T: numpy::Element + Copy>(a: &PyReadonlyArray1<'_, T>) -> Vec<T> {
    a.as_array().iter().copied().collect()
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
    let (items, sizes, bounds) = (copied(&items), copied(&sizes), positions(&bounds)?);
    let params = Params {
        window,
        protected,
        width,
    };
    let hits = py
        .detach(|| cachesim::replay(&items, &sizes, &bounds, budget, params))
        .map_err(value_error)?;
    Ok(hits.into_pyarray(py))
}

/// The streams (as in `tinylfu_replay`) replayed once per budget: `(hits, repeats)` where
/// `hits[b, s]` counts the `measured` requests of stream `s` that hit under `budgets[b]`
/// bytes, and `repeats[s]` those whose item stream `s` asked for before (an unbounded
/// cache's hits).
#[pyfunction]
#[pyo3(signature = (items, sizes, bounds, measured, budgets, window=0.01, protected=0.8, width=4096))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn tinylfu_hit_counts<'py>(
    py: Python<'py>,
    items: PyReadonlyArray1<'py, u64>,
    sizes: PyReadonlyArray1<'py, u64>,
    bounds: PyReadonlyArray1<'py, i64>,
    measured: PyReadonlyArray1<'py, bool>,
    budgets: PyReadonlyArray1<'py, u64>,
    window: f64,
    protected: f64,
    width: usize,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray1<i64>>)> {
    let (items, sizes, bounds) = (copied(&items), copied(&sizes), positions(&bounds)?);
    let (measured, budgets) = (copied(&measured), copied(&budgets));
    let params = Params {
        window,
        protected,
        width,
    };
    let (hits, repeats) = py
        .detach(|| -> Result<_, ReplayError> {
            let prepared = Prepared::new(&items, &sizes, &bounds, params)?;
            Ok((
                prepared.measured_hits(&measured, &budgets)?,
                prepared.measured_repeats(&measured)?,
            ))
        })
        .map_err(value_error)?;
    let streams = repeats.len();
    let flat: Vec<i64> = hits
        .into_iter()
        .flatten()
        .map(|c| i64::try_from(c).unwrap_or(i64::MAX))
        .collect();
    let hits = Array2::from_shape_vec((budgets.len(), streams), flat)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let repeats: Vec<i64> = repeats
        .into_iter()
        .map(|c| i64::try_from(c).unwrap_or(i64::MAX))
        .collect();
    Ok((hits.into_pyarray(py), repeats.into_pyarray(py)))
}

/// LRU byte stack distance of every request (-1: a stream's first request for its item, or a
/// request outside every stream); streams as in `tinylfu_replay`.
#[pyfunction]
fn lru_stack_distances<'py>(
    py: Python<'py>,
    items: PyReadonlyArray1<'py, u64>,
    sizes: PyReadonlyArray1<'py, u64>,
    bounds: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (items, sizes, bounds) = (copied(&items), copied(&sizes), positions(&bounds)?);
    let out = py
        .detach(|| lru::stack_distances(&items, &sizes, &bounds))
        .map_err(value_error)?;
    Ok(out.into_pyarray(py))
}
