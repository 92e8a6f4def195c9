//! Bindings of `crate::shard`: conversion and calls only. The heavy calls compute without the
//! GIL: `tenant_hashes` on the strings themselves (`PyBackedStr`: immutable, no copy),
//! `NativePool.shard_matrix` on a copy of the hash array (which Python could write to).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1};
use pyo3::exceptions::{PyValueError, PyZeroDivisionError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;

use crate::shard::{self, Pool, FALLBACK_ZONED};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FALLBACK_ZONED", FALLBACK_ZONED)?;
    m.add_class::<NativePool>()?;
    m.add_function(wrap_pyfunction!(tenant_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(primary_index, m)?)?;
    m.add_function(wrap_pyfunction!(primary_indices, m)?)?;
    m.add_function(wrap_pyfunction!(model_primary_indices, m)?)?;
    m.add_function(wrap_pyfunction!(member_order, m)?)?;
    Ok(())
}

/// One pool's members with their hashes precomputed: build once per snapshot epoch.
#[pyclass(frozen, module = "shoal._native")]
pub struct NativePool {
    pool: Pool,
}

#[pymethods]
impl NativePool {
    #[new]
    #[pyo3(signature = (worker_ids, zones, salt, shard_size = 2))]
    fn new(
        worker_ids: Vec<String>,
        zones: Option<Vec<String>>,
        salt: &[u8],
        shard_size: usize,
    ) -> PyResult<Self> {
        let zones = zones.unwrap_or_else(|| vec![String::new(); worker_ids.len()]);
        Pool::new(&worker_ids, &zones, salt, shard_size)
            .map(|pool| Self { pool })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    fn __len__(&self) -> usize {
        self.pool.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "NativePool({} members, {} zones, shard_size={})",
            self.pool.len(),
            self.pool.n_zones(),
            self.pool.shard_size()
        )
    }

    #[getter]
    fn n_zones(&self) -> usize {
        self.pool.n_zones()
    }

    #[getter]
    fn shard_size(&self) -> usize {
        self.pool.shard_size()
    }

    #[getter]
    fn worker_ids(&self) -> Vec<String> {
        self.pool.worker_ids().to_vec()
    }

    fn worker_hashes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.pool.worker_hashes().to_vec().into_pyarray(py)
    }

    fn tenant_hash(&self, tenant: &str) -> u64 {
        self.pool.tenant_hash(tenant)
    }

    #[pyo3(signature = (tenant, length = None))]
    fn selection_order(&self, tenant: &str, length: Option<i64>) -> Vec<usize> {
        // A negative length picks nothing by the zone rule, as in the reference.
        let length = length.map_or(self.pool.len(), |l| usize::try_from(l).unwrap_or(0));
        self.pool
            .selection_order(self.pool.tenant_hash(tenant), length)
    }

    fn shard_matrix<'py>(
        &self,
        py: Python<'py>,
        tenant_hashes: PyReadonlyArray1<'py, u64>,
        k: usize,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        // A copy: Python code may write to the array once the GIL is released.
        let hashes: Vec<u64> = match tenant_hashes.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => tenant_hashes.as_array().iter().copied().collect(),
        };
        let k = k.min(self.pool.len());
        let pool = &self.pool;
        let rows = py.detach(|| {
            pool.shard_matrix(&hashes, k)
                .into_iter()
                .map(i64::from)
                .collect::<Vec<i64>>()
        });
        let matrix = Array2::from_shape_vec((hashes.len(), k), rows)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(matrix.into_pyarray(py))
    }

    #[pyo3(signature = (tenant, shard_size = 0, members = Vec::new()))]
    fn ranked(&self, tenant: &str, shard_size: i64, members: Vec<String>) -> (Vec<usize>, usize) {
        // Zero or negative: the pool's shard size (the reference tests `> 0`).
        let shard_size = usize::try_from(shard_size).unwrap_or(0);
        self.pool.ranked(tenant, shard_size, &members)
    }
}

#[pyfunction]
fn tenant_hashes<'py>(
    py: Python<'py>,
    tenants: Vec<PyBackedStr>,
    salt: &[u8],
) -> Bound<'py, PyArray1<u64>> {
    let hashes = py.detach(|| shard::tenant_hashes(&tenants, salt));
    hashes.into_pyarray(py)
}

#[pyfunction]
fn primary_index(key: &str, k: usize) -> PyResult<usize> {
    // The reference computes `h % k`: k = 0 fails as Python's modulo does.
    shard::primary_index(key, k)
        .ok_or_else(|| PyZeroDivisionError::new_err("integer modulo by zero"))
}

/// `primary_index(keys[m], k[m])` for every model `m` (the simulator's routing); k must be >= 1.
#[pyfunction]
fn primary_indices<'py>(
    py: Python<'py>,
    keys: Vec<PyBackedStr>,
    k: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = k.as_slice()?.to_vec();
    if k.len() != keys.len() {
        return Err(PyValueError::new_err(format!(
            "{} keys but {} shard sizes",
            keys.len(),
            k.len()
        )));
    }
    let out = py.detach(|| -> Option<Vec<i64>> {
        keys.iter()
            .zip(&k)
            .map(|(key, &n)| {
                let n = usize::try_from(n).ok()?;
                shard::primary_index(key, n).and_then(|i| i64::try_from(i).ok())
            })
            .collect()
    });
    out.map(|v| v.into_pyarray(py))
        .ok_or_else(|| PyZeroDivisionError::new_err("integer modulo by zero"))
}

/// `primary_index(f"{tenants[model_tenant[m]]}/{names[m]}:{versions[m]}", k[m])` for every
/// model `m`, the keys built natively (the simulator's routing without 10M Python strings).
#[pyfunction]
fn model_primary_indices<'py>(
    py: Python<'py>,
    tenants: Vec<PyBackedStr>,
    model_tenant: PyReadonlyArray1<'py, i64>,
    names: Vec<PyBackedStr>,
    versions: PyReadonlyArray1<'py, i64>,
    k: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let model_tenant: Vec<usize> = model_tenant
        .as_array()
        .iter()
        .map(|&t| usize::try_from(t).ok().filter(|&t| t < tenants.len()))
        .collect::<Option<_>>()
        .ok_or_else(|| PyValueError::new_err("a model's tenant index is not in the tenants"))?;
    let versions: Vec<i64> = versions.as_array().iter().copied().collect();
    // Zero or negative: no primary, as `primary_indices` says it.
    let k: Vec<usize> = k
        .as_array()
        .iter()
        .map(|&n| usize::try_from(n).unwrap_or(0))
        .collect();
    let m = model_tenant.len();
    if names.len() != m || versions.len() != m || k.len() != m {
        return Err(PyValueError::new_err(format!(
            "{m} models but {} names, {} versions and {} shard sizes",
            names.len(),
            versions.len(),
            k.len()
        )));
    }
    let out =
        py.detach(|| shard::model_primary_indices(&tenants, &model_tenant, &names, &versions, &k));
    let out = out.ok_or_else(|| PyZeroDivisionError::new_err("integer modulo by zero"))?;
    let out: Vec<i64> = out.into_iter().map(|p| p as i64).collect();
    Ok(out.into_pyarray(py))
}

/// The gateway's member choice (`gateway::policy::choose`): candidates best first, as
/// indices into the pool, for a tenant's `ranked` members and shard size `k`.
#[pyfunction]
fn member_order(
    ranked: Vec<usize>,
    k: usize,
    model_key: &str,
    spill_at: u32,
    in_flight: Vec<u32>,
    unhealthy: Vec<bool>,
) -> PyResult<Vec<usize>> {
    let n = ranked.iter().max().map_or(0, |m| m + 1);
    if in_flight.len() < n || unhealthy.len() < n {
        return Err(PyValueError::new_err(
            "in_flight and unhealthy need an entry for every member index in ranked",
        ));
    }
    Ok(crate::gateway::policy::choose(
        &ranked,
        k,
        model_key,
        spill_at,
        |m| in_flight[m],
        |m| unhealthy[m],
    ))
}
