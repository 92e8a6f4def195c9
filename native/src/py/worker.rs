//! Bindings of `crate::worker`: the `WorkerFront` class Python's worker drives, and the
//! `FrontJob`s it answers.
//!
//! Every call that may wait (start, stop, next_job) releases the GIL; the request path never
//! takes it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::rpc::grpc::Code;
use crate::worker::codec::{Signature, TensorSpec};
use crate::worker::delegate::{Job, Reply};
use crate::worker::model::{BatchSettings, InlinePolicy, Resident, Runner};
use crate::worker::{Config, Front};

use super::runtime::{PyOnnxSession, PyTreeBooster};

#[pyclass(name = "WorkerFront", module = "shoal._native", frozen)]
pub struct PyWorkerFront {
    inner: Front,
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, got {value}"
        ))
    })
}

/// `(name, datatype, shape)` as Python's signature gives it.
type SpecTuple = (String, String, Vec<i64>);

fn specs(v: Vec<SpecTuple>) -> Vec<TensorSpec> {
    v.into_iter()
        .map(|(name, datatype, shape)| TensorSpec {
            name,
            datatype,
            shape,
        })
        .collect()
}

#[pymethods]
impl PyWorkerFront {
    #[new]
    #[pyo3(signature = (
        *, host, port, io_threads=1, predict_threads=1, stuck_headroom=2,
        predict_timeout_s=10.0, max_message_bytes=64 << 20, max_rows=4096, batching=true,
        max_batch_rows=256, max_delay_s=0.002, batch_when_idle=true, inline_max_s=0.001,
        inline_max_bytes=64 << 10, model_concurrency=1,
        model_max_queue=64, model_queue_wait_s=1.0, delegate_queue=4096,
        tls_cert=String::new(), tls_key=String::new(), tls_ca=String::new(),
        tls_client_auth=false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        io_threads: usize,
        predict_threads: usize,
        stuck_headroom: usize,
        predict_timeout_s: f64,
        max_message_bytes: usize,
        max_rows: usize,
        batching: bool,
        max_batch_rows: usize,
        max_delay_s: f64,
        batch_when_idle: bool,
        inline_max_s: f64,
        inline_max_bytes: usize,
        model_concurrency: u32,
        model_max_queue: usize,
        model_queue_wait_s: f64,
        delegate_queue: usize,
        tls_cert: String,
        tls_key: String,
        tls_ca: String,
        tls_client_auth: bool,
    ) -> PyResult<PyWorkerFront> {
        let config = Config {
            host,
            port,
            io_threads: io_threads.max(1),
            predict_threads: predict_threads.max(1),
            stuck_headroom,
            predict_timeout: seconds("predict_timeout_s", predict_timeout_s)?,
            max_message_bytes,
            max_rows,
            batching: BatchSettings {
                enabled: batching,
                max_rows: max_batch_rows.max(1),
                max_delay: seconds("max_delay_s", max_delay_s)?,
                when_idle: batch_when_idle,
            },
            inline: InlinePolicy {
                max_s: inline_max_s,
                max_bytes: inline_max_bytes,
            },
            model_concurrency: model_concurrency.max(1),
            model_max_queue,
            model_queue_wait: seconds("model_queue_wait_s", model_queue_wait_s)?,
            delegate_queue,
            tls_cert,
            tls_key,
            tls_ca,
            tls_client_auth,
        };
        let inner = Front::new(config).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(PyWorkerFront { inner })
    }

    /// Bind and serve; returns the bound port. Raises OSError when it cannot bind.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        let addr = py
            .detach(|| self.inner.start())
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(addr.port())
    }

    /// Ready (registered, not draining): ServerReady and health answer from this.
    fn set_ready(&self, ready: bool) {
        self.inner.shared.ready.store(ready, Ordering::Release);
        self.inner.shared.health_changed();
    }

    /// Serve `model` (`tenant/name`) `version` natively from now on, predicting through
    /// `runner` (a `TreeBooster` or an `OnnxSession`); `inputs`/`outputs` are the
    /// signature's `(name, datatype, shape)`; `warm_s`: CPU seconds of a 1-row prediction at
    /// load, if one was made (its proof of speed for the inline policy); `bounded`: whether
    /// a call's running time is bounded by its input's size (only such models may run on
    /// the front's own thread).
    #[pyo3(signature = (model, version, runner, inputs, outputs, warm_s=None, bounded=true))]
    #[allow(clippy::too_many_arguments)]
    fn add_model(
        &self,
        model: String,
        version: u64,
        runner: &Bound<'_, PyAny>,
        inputs: Vec<SpecTuple>,
        outputs: Vec<SpecTuple>,
        warm_s: Option<f64>,
        bounded: bool,
    ) -> PyResult<()> {
        let cfg = &self.inner.shared.config;
        let runner: Arc<dyn Runner> = if let Ok(b) = runner.cast::<PyTreeBooster>() {
            b.get().booster()
        } else if let Ok(s) = runner.cast::<PyOnnxSession>() {
            s.get().session()
        } else {
            return Err(PyTypeError::new_err(
                "add_model takes a TreeBooster or an OnnxSession",
            ));
        };
        let sig = Signature {
            inputs: specs(inputs),
            outputs: specs(outputs),
        };
        let mut resident = Resident::new(
            model,
            version,
            runner,
            sig,
            cfg.model_concurrency,
            cfg.model_max_queue,
        );
        resident.bounded = bounded;
        if let Some(s) = warm_s.filter(|s| s.is_finite() && *s >= 0.0) {
            resident.seed(s);
        }
        self.inner.shared.table.insert(resident);
        Ok(())
    }

    /// Stop serving a version natively (evicted, quarantined); True if it was served.
    fn remove_model(&self, model: &str, version: u64) -> bool {
        self.inner.shared.table.remove(model, version)
    }

    /// A fresh record of `model` (its etcd JSON), or None to forget it; ValueError when it
    /// does not decode (it is forgotten).
    fn set_record(&self, model: &str, value: Option<&[u8]>) -> PyResult<()> {
        self.inner
            .shared
            .table
            .set_record(model, value)
            .map_err(PyValueError::new_err)
    }

    /// Forget every record (they stopped being fresh).
    fn clear_records(&self) {
        self.inner.shared.table.clear_records();
    }

    fn has_model(&self, model: &str, version: u64) -> bool {
        self.inner.shared.table.contains(model, version)
    }

    /// Versions served natively since the last call: `(tenant/name, version)`.
    fn take_touched(&self) -> Vec<(String, u64)> {
        self.inner.shared.table.take_touched()
    }

    /// The next job for Python, waiting at most `timeout_s`; None if there is none.
    fn next_job(&self, py: Python<'_>, timeout_s: f64) -> PyResult<Option<PyFrontJob>> {
        let timeout = seconds("timeout_s", timeout_s)?;
        let shared = &self.inner.shared;
        let job = py.detach(|| shared.delegate.next(timeout));
        Ok(job.map(PyFrontJob::from))
    }

    /// The counters, for the Prometheus export and the worker's stats: plain counts, and
    /// `infer_codes` (ModelInfer answered here, by status code name), `infer_seconds` and
    /// `batch_rows` (histograms: per-bucket counts as prometheus_client keeps them, and the
    /// sum).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let shared = &self.inner.shared;
        let s = &shared.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let d = PyDict::new(py);
        for (k, v) in [
            ("in_flight", load(&s.in_flight)),
            ("total", load(&s.total)),
            ("delegated", load(&s.delegated)),
            ("miss_waits", load(&s.miss_waits)),
            ("expired_batch", load(&s.expired_batch)),
            ("expired_queue", load(&s.expired_queue)),
            ("expired_pool", load(&s.expired_pool)),
            ("rejected_rows", load(&s.rejected_rows)),
            ("rejected_busy", load(&s.rejected_busy)),
            ("inline", load(&s.inline)),
            ("stuck", shared.pool.stuck_total()),
            ("abandoned", shared.pool.abandoned_total()),
            ("models", shared.table.len() as u64),
            ("delegate_queued", shared.delegate.queued() as u64),
        ] {
            d.set_item(k, v)?;
        }
        let codes: HashMap<&str, u64> = Code::ALL
            .iter()
            .map(|&c| (c.name(), load(&s.infer_codes[c as usize])))
            .filter(|&(_, n)| n > 0)
            .collect();
        d.set_item("infer_codes", codes)?;
        d.set_item("infer_seconds", s.infer_seconds.snapshot())?;
        d.set_item("batch_rows", s.batch_rows.snapshot())?;
        Ok(d)
    }

    /// Abandoned prediction calls of `model:version` whose threads have not returned.
    fn stuck(&self, label: &str) -> u32 {
        self.inner.shared.pool.stuck(label)
    }

    /// Drain and stop; blocks up to `grace_s` seconds (keep answering jobs meanwhile).
    fn stop(&self, py: Python<'_>, grace_s: f64) -> PyResult<()> {
        let grace = seconds("grace_s", grace_s)?;
        py.detach(|| self.inner.stop(grace));
        Ok(())
    }
}

/// A call handed to Python: answer it once with `reply`.
#[pyclass(name = "FrontJob", module = "shoal._native", frozen)]
pub struct PyFrontJob {
    #[pyo3(get)]
    method: String,
    payload: Bytes,
    deadline: Option<Instant>,
    reply: Mutex<Option<tokio::sync::oneshot::Sender<Reply>>>,
}

impl From<Job> for PyFrontJob {
    fn from(job: Job) -> PyFrontJob {
        PyFrontJob {
            method: job.method,
            payload: job.payload,
            deadline: job.deadline,
            reply: Mutex::new(job.reply),
        }
    }
}

#[pymethods]
impl PyFrontJob {
    /// The request message.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.payload)
    }

    /// Seconds left before the caller's deadline (None: no deadline; may be negative).
    #[getter]
    fn time_remaining(&self) -> Option<f64> {
        self.deadline.map(|d| {
            let now = Instant::now();
            if d >= now {
                (d - now).as_secs_f64()
            } else {
                -(now - d).as_secs_f64()
            }
        })
    }

    /// Whether an answer is expected (outcomes expect none).
    #[getter]
    fn wants_reply(&self) -> bool {
        self.reply
            .lock()
            .map(|r| r.as_ref().is_some_and(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    /// Answer: a gRPC status code (0 = OK, with `body` the response message), its message,
    /// and the router's retry hint: "" (its own rules), "elsewhere" (another worker may
    /// succeed) or "nowhere" (none would). A second answer is an error.
    #[pyo3(signature = (code, message="", body=None, retry=""))]
    fn reply(&self, code: u32, message: &str, body: Option<&[u8]>, retry: &str) -> PyResult<()> {
        let retry = match retry {
            "" => None,
            "elsewhere" => Some("elsewhere"),
            "nowhere" => Some("nowhere"),
            other => {
                return Err(PyValueError::new_err(format!(
                    "retry must be '', 'elsewhere' or 'nowhere', got {other:?}"
                )))
            }
        };
        let sender = self
            .reply
            .lock()
            .map_err(|_| PyRuntimeError::new_err("job lock poisoned"))?
            .take();
        let Some(sender) = sender else {
            return Err(PyRuntimeError::new_err("this job was already answered"));
        };
        let _ = sender.send(Reply {
            code: Code::from_u32(code),
            message: message.to_string(),
            body: body.map(Bytes::copy_from_slice).unwrap_or_default(),
            retry,
        });
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWorkerFront>()?;
    m.add_class::<PyFrontJob>()?;
    Ok(())
}
