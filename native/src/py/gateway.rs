//! Bindings of `crate::gateway`: the `Gateway` class Python's router drives.
//!
//! Every call that may wait (start, stop, take_shadow) releases the GIL; the request path
//! never takes it.

use std::collections::HashMap;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::gateway::quota::QuotaSettings;
use crate::gateway::{Config, Gateway};

/// A shadow outcome as Python receives it:
/// (ts, model, primary_version, shadow_version, primary, shadow or None, error or None).
type Outcome = (
    f64,
    String,
    u64,
    u64,
    Py<PyBytes>,
    Option<Py<PyBytes>>,
    Option<String>,
);

#[pyclass(name = "Gateway", module = "shoal._native", frozen)]
pub struct PyGateway {
    inner: Gateway,
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, got {value}"
        ))
    })
}

#[pymethods]
impl PyGateway {
    #[new]
    #[pyo3(signature = (
        *, host, port, rest_port=None, threads=1, retries=2, default_timeout_s=30.0, spill_at=8, eject_s=5.0,
        worker_ping_s=0.5, shadow_queue=256, max_message_bytes=64 << 20, seed=0, tenant_rate_limit=0.0,
        tenant_max_in_flight=0, tenant_queue_s=0.5, tenant_max_queued=256, auth=false,
        tls_cert=String::new(), tls_key=String::new(), tls_ca=String::new(),
        tls_client_auth=false, name=String::from("shoal-router"), version=String::new(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        rest_port: Option<u16>,
        threads: usize,
        retries: usize,
        default_timeout_s: f64,
        spill_at: u32,
        eject_s: f64,
        worker_ping_s: f64,
        shadow_queue: usize,
        max_message_bytes: usize,
        seed: u64,
        tenant_rate_limit: f64,
        tenant_max_in_flight: u32,
        tenant_queue_s: f64,
        tenant_max_queued: usize,
        auth: bool,
        tls_cert: String,
        tls_key: String,
        tls_ca: String,
        tls_client_auth: bool,
        name: String,
        version: String,
    ) -> PyResult<PyGateway> {
        if !(eject_s.is_finite() && eject_s >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "eject_s must be >= 0, got {eject_s}"
            )));
        }
        if !(tenant_rate_limit.is_finite() && tenant_rate_limit >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "tenant_rate_limit must be >= 0, got {tenant_rate_limit}"
            )));
        }
        seconds("tenant_queue_s", tenant_queue_s)?;
        let config = Config {
            host,
            port,
            rest_port,
            threads: threads.max(1),
            retries,
            default_timeout: seconds("default_timeout_s", default_timeout_s)?,
            spill_at,
            eject_s,
            worker_ping: seconds("worker_ping_s", worker_ping_s)?,
            shadow_queue,
            max_message_bytes,
            seed,
            quotas: QuotaSettings {
                default_rate: tenant_rate_limit,
                default_in_flight: tenant_max_in_flight,
                burst_s: 1.0,
                queue_s: tenant_queue_s,
                max_queued: tenant_max_queued,
            },
            auth,
            tls_cert,
            tls_key,
            tls_ca,
            tls_client_auth,
            name,
            version,
        };
        let inner = Gateway::new(config).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(PyGateway { inner })
    }

    /// Bind and serve; returns "host:port". Raises OSError when the port cannot be bound.
    fn start(&self, py: Python<'_>) -> PyResult<String> {
        let addr = py
            .detach(|| self.inner.start())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(addr.to_string())
    }

    /// The bound "host:port", or None before `start`.
    #[getter]
    fn address(&self) -> Option<String> {
        self.inner.address().map(|a| a.to_string())
    }

    /// The REST listener's bound "host:port", or None (no REST port, or before `start`).
    #[getter]
    fn rest_address(&self) -> Option<String> {
        self.inner.rest_address().map(|a| a.to_string())
    }

    /// Apply etcd changes `(key, value or None)`; returns `(key, why)` for values that could
    /// not be decoded (dropped, like deletions).
    fn apply(
        &self,
        py: Python<'_>,
        changes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Vec<(String, String)> {
        py.detach(|| self.inner.shared.table.apply(&changes))
    }

    /// Report the view: `ready` once the first full read is done; `stale` while etcd is away.
    fn set_view(&self, ready: bool, stale: bool) {
        let s = &self.inner.shared;
        s.view
            .ready
            .store(ready, std::sync::atomic::Ordering::Release);
        s.view
            .stale
            .store(stale, std::sync::atomic::Ordering::Release);
        s.health_changed();
    }

    /// The counters, for the Prometheus export.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = self.inner.shared.stats.snapshot();
        let d = PyDict::new(py);
        d.set_item(
            "requests",
            snap.requests.into_iter().collect::<HashMap<_, _>>(),
        )?;
        d.set_item("latency_buckets", snap.latency_buckets)?;
        d.set_item("latency_sum", snap.latency_sum)?;
        d.set_item("latency_count", snap.latency_count)?;
        d.set_item("retries", snap.retries)?;
        d.set_item(
            "resolved",
            snap.resolved.into_iter().collect::<HashMap<_, _>>(),
        )?;
        d.set_item("shadow_sent", snap.shadow_sent)?;
        d.set_item("shadow_dropped", snap.shadow_dropped)?;
        d.set_item("quota_queued", snap.quota_queued)?;
        d.set_item("quota_refused", snap.quota_refused)?;
        d.set_item("in_flight", snap.in_flight)?;
        d.set_item("models", self.inner.shared.table.model_count())?;
        Ok(d)
    }

    /// Requests per tenant since the last call.
    fn take_load(&self) -> HashMap<String, u64> {
        self.inner.shared.stats.take_load()
    }

    /// Up to `max` shadow outcomes, waiting at most `timeout_s` for the first.
    fn take_shadow(&self, py: Python<'_>, max: usize, timeout_s: f64) -> PyResult<Vec<Outcome>> {
        let timeout = seconds("timeout_s", timeout_s)?;
        let outcomes = py.detach(|| self.inner.shared.shadow.take(max, timeout));
        Ok(outcomes
            .into_iter()
            .map(|o| {
                let (shadow, error) = match o.shadow {
                    Ok(b) => (Some(PyBytes::new(py, &b).unbind()), None),
                    Err(e) => (None, Some(e)),
                };
                (
                    o.ts,
                    o.model,
                    o.primary_version,
                    o.shadow_version,
                    PyBytes::new(py, &o.primary).unbind(),
                    shadow,
                    error,
                )
            })
            .collect())
    }

    /// Drain and stop (see `Gateway::stop`); blocks up to `grace_s` seconds.
    fn stop(&self, py: Python<'_>, grace_s: f64) -> PyResult<()> {
        let grace = seconds("grace_s", grace_s)?;
        py.detach(|| self.inner.stop(grace));
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGateway>()?;
    Ok(())
}
