//! The worker's inference front: the Open Inference Protocol served natively.
//!
//! A request for a resident model version (pushed by Python when it loads one) is decoded,
//! validated, batched and predicted here, on the front's runtime and prediction threads,
//! without Python. Everything else (a model not resident yet, a version named by alias,
//! WorkerAdmin, ModelReady/ModelMetadata, a quarantined model) is handed to Python
//! (`delegate`), which keeps the control: loading, the cache and its tiers, quarantine,
//! metrics. Concurrent misses for one model version make one call into Python; the others
//! wait here and are served natively once it is resident.
//!
//! Modules: `codec` (wire format, validation), `model` (a resident model, batching, its
//! concurrency bound), `pool` (prediction threads), `delegate` (calls into Python),
//! `table` (resident models), `service` (what each method answers).

pub mod codec;
pub mod delegate;
pub mod model;
pub mod pool;
pub mod service;
pub mod table;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::rpc::server;

/// How the front runs (the worker's settings).
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Runtime threads for the network side (1: everything on one thread).
    pub io_threads: usize,
    /// Prediction threads: calls running at once, and spare threads for stuck calls.
    pub predict_threads: usize,
    pub stuck_headroom: usize,
    pub predict_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_rows: usize,
    pub batching: model::BatchSettings,
    pub inline: model::InlinePolicy,
    pub model_concurrency: u32,
    pub model_max_queue: usize,
    pub model_queue_wait: Duration,
    pub delegate_queue: usize,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_ca: String,
    pub tls_client_auth: bool,
}

/// Upper bounds of `shoal_worker_request_seconds` (worker/metrics.py).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of `shoal_worker_batch_rows`.
pub const ROW_BOUNDS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram as prometheus_client keeps one: a count per bucket (the first bound at or
/// above the value; the last bucket is +Inf) and the sum.
pub struct Histogram<const N: usize> {
    bounds: &'static [f64],
    pub counts: [AtomicU64; N],
    /// The sum, in millionths.
    pub sum_micro: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.partition_point(|&b| b < value).min(N - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        (
            self.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Counters Python exports under the worker's metric names (only what the front answers
/// itself: what Python answers, Python counts).
pub struct Stats {
    pub in_flight: AtomicU64,
    pub total: AtomicU64,
    /// ModelInfer answered here, by status code.
    pub infer_codes: [AtomicU64; 17],
    pub infer_seconds: Histogram<15>,
    pub batch_rows: Histogram<12>,
    /// Handed to Python.
    pub delegated: AtomicU64,
    /// Requests that waited for another request's miss.
    pub miss_waits: AtomicU64,
    pub expired_batch: AtomicU64,
    pub expired_queue: AtomicU64,
    pub expired_pool: AtomicU64,
    pub rejected_rows: AtomicU64,
    pub rejected_busy: AtomicU64,
    /// Predictions run on the front's own thread (`InlinePolicy`).
    pub inline: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            in_flight: AtomicU64::new(0),
            total: AtomicU64::new(0),
            infer_codes: std::array::from_fn(|_| AtomicU64::new(0)),
            infer_seconds: Histogram::new(&LATENCY_BOUNDS),
            batch_rows: Histogram::new(&ROW_BOUNDS),
            delegated: AtomicU64::new(0),
            miss_waits: AtomicU64::new(0),
            expired_batch: AtomicU64::new(0),
            expired_queue: AtomicU64::new(0),
            expired_pool: AtomicU64::new(0),
            rejected_rows: AtomicU64::new(0),
            rejected_busy: AtomicU64::new(0),
            inline: AtomicU64::new(0),
        }
    }
}

/// Everything the request path shares.
pub struct Shared {
    pub config: Config,
    pub table: table::Table,
    pub pool: pool::Pool,
    pub delegate: delegate::Delegate,
    pub stats: Stats,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    /// grpc.health.v1 watchers: sent on every change of readiness; true once stopping.
    pub health: watch::Sender<bool>,
    /// Traffic-split draws of versions resolved here.
    pub rng: Mutex<rand::rngs::SmallRng>,
}

impl Shared {
    pub fn new(config: Config) -> io::Result<Shared> {
        Ok(Shared {
            pool: pool::Pool::new(
                "predict",
                config.predict_threads,
                config.stuck_headroom,
                config.predict_timeout,
            )?,
            delegate: delegate::Delegate::new(config.delegate_queue),
            table: table::Table::default(),
            stats: Stats::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            health: watch::Sender::new(false),
            rng: Mutex::new(rand::SeedableRng::from_os_rng()),
            config,
        })
    }

    /// Wake health watchers (the serving status may have changed).
    pub fn health_changed(&self) {
        self.health.send_modify(|_| {});
    }
}

/// The front and, once started, its runtime thread.
pub struct Front {
    pub shared: Arc<Shared>,
    running: Mutex<Option<server::Serving>>,
}

impl Front {
    pub fn new(config: Config) -> io::Result<Front> {
        Ok(Front {
            shared: Arc::new(Shared::new(config)?),
            running: Mutex::new(None),
        })
    }

    /// Bind and serve on a runtime of its own; returns the bound address.
    pub fn start(&self) -> io::Result<SocketAddr> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Err(io::Error::other("the worker front is already started"));
        }
        let cfg = &self.shared.config;
        let listen = server::Listen {
            name: "shoal-front",
            threads: cfg.io_threads,
            host: &cfg.host,
            port: cfg.port,
            cert: &cfg.tls_cert,
            key: &cfg.tls_key,
            ca: &cfg.tls_ca,
            client_auth: cfg.tls_client_auth,
            send_buffer: cfg.max_message_bytes,
        };
        let shared = self.shared.clone();
        let handler = move |req, respond| service::handle(shared.clone(), req, respond);
        let (serving, local) = server::Serving::start(&listen, handler, || {})?;
        *running = Some(serving);
        Ok(local)
    }

    /// Stop accepting, GOAWAY to every connection, wait up to `grace` for open streams (and
    /// the Python calls they wait on) to finish, then end the rest. Blocking.
    pub fn stop(&self, grace: Duration) {
        let Some(run) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        self.shared.draining.store(true, Ordering::Release);
        self.shared.health_changed();
        run.stop_accepting();
        self.shared.health.send_replace(true);
        run.finish(grace, || self.shared.delegate.close());
        self.shared.pool.close();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}
