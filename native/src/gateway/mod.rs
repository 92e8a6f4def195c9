//! The gateway: the router's data path. No Python runs per request.
//!
//! Python (`router/`) is its control plane: it watches etcd and pushes every change of the
//! keys the gateway needs into the table (`apply`), tells it when its view is complete or
//! stale, reads its counters for Prometheus, reports per-tenant load, and logs shadow
//! outcomes. The gateway runs on a tokio runtime of its own threads.
//!
//! Concerns, one module each: `table` (routing state), `auth` (API keys), `quota`, `policy`
//! (member choice, ejection), `forward` (pooled HTTP/2 to workers), `service` (what each
//! method answers), `shadow`, `server` (accept, TLS, graceful shutdown), `stats`.

pub mod auth;
pub mod clock;
pub mod forward;
pub mod oip;
pub mod policy;
pub mod quota;
pub mod repository;
pub mod service;
pub mod shadow;
pub mod stats;
pub mod stream;
pub mod table;

pub use crate::rpc::{grpc, server};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;

use clock::{Clock, TokioClock};
use quota::{QuotaSettings, Quotas};

/// How the gateway runs (the router's settings).
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// The REST port (KServe V2 over HTTP/1.1); None: no REST listener.
    pub rest_port: Option<u16>,
    /// Runtime threads: 1 runs everything on one thread (no cross-thread wake-ups).
    pub threads: usize,
    pub retries: usize,
    pub default_timeout: Duration,
    pub spill_at: u32,
    pub eject_s: f64,
    /// Keepalive PING interval on worker connections (zero: none).
    pub worker_ping: Duration,
    pub shadow_queue: usize,
    pub max_message_bytes: usize,
    pub seed: u64,
    pub quotas: QuotaSettings,
    pub auth: bool,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_ca: String,
    pub tls_client_auth: bool,
    /// ServerMetadata's name and version.
    pub name: String,
    pub version: String,
}

/// The view's state as Python reports it.
#[derive(Default)]
pub struct ViewState {
    /// The first full read of etcd is done.
    pub ready: AtomicBool,
    /// etcd is unreachable: serving from the last view.
    pub stale: AtomicBool,
}

/// Everything the request path shares.
pub struct Shared {
    pub config: Config,
    pub table: table::Table,
    pub stats: stats::Stats,
    pub keys: auth::KeyChecker,
    pub quotas: Quotas,
    pub members: policy::Members,
    pub upstreams: forward::Upstreams,
    pub shadow: shadow::ShadowQueue,
    pub view: ViewState,
    pub draining: AtomicBool,
    /// Health watchers' wake-up; `true` once the gateway is shutting down.
    pub health: watch::Sender<bool>,
    rng: Mutex<SmallRng>,
}

impl Shared {
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> io::Result<Shared> {
        let client_tls = if config.tls_ca.is_empty() {
            None
        } else {
            Some(server::client_tls(
                &config.tls_ca,
                &config.tls_cert,
                &config.tls_key,
            )?)
        };
        let rng = if config.seed == 0 {
            SmallRng::from_os_rng()
        } else {
            SmallRng::seed_from_u64(config.seed)
        };
        Ok(Shared {
            table: table::Table::new(),
            stats: stats::Stats::default(),
            keys: auth::KeyChecker::default(),
            quotas: Quotas::new(clock.clone(), config.quotas, config.seed),
            members: policy::Members::new(clock, config.eject_s),
            upstreams: forward::Upstreams::new(
                client_tls,
                Duration::from_secs(2),
                config.max_message_bytes,
                config.worker_ping,
            ),
            shadow: shadow::ShadowQueue::new(config.shadow_queue),
            view: ViewState::default(),
            draining: AtomicBool::new(false),
            health: watch::Sender::new(false),
            rng: Mutex::new(rng),
            config,
        })
    }

    /// Wake health watchers (the serving status may have changed).
    pub fn health_changed(&self) {
        self.health.send_modify(|_| {});
    }
}

/// Keeps a timer due within `ANCHOR` at all times.
///
/// Every forwarded call runs under a deadline timer. tokio wakes its driver (an eventfd write
/// and one more epoll return) whenever a timer is registered that is due before the driver's
/// next wake-up, which an idle gateway does not have: at low load that was two syscalls per
/// request. With this anchor, deadlines further away than `ANCHOR` register silently.
async fn timer_anchor() {
    const ANCHOR: Duration = Duration::from_millis(100);
    loop {
        tokio::time::sleep(ANCHOR).await;
    }
}

/// A gateway and, once started, its runtime thread.
pub struct Gateway {
    pub shared: Arc<Shared>,
    running: Mutex<Option<server::Serving>>,
    address: Mutex<Option<SocketAddr>>,
    rest_address: Mutex<Option<SocketAddr>>,
    rest_connections: Arc<crate::rest::Connections>,
}

impl Gateway {
    pub fn new(config: Config) -> io::Result<Gateway> {
        Ok(Gateway {
            shared: Arc::new(Shared::new(config, Arc::new(TokioClock::new()))?),
            running: Mutex::new(None),
            address: Mutex::new(None),
            rest_address: Mutex::new(None),
            rest_connections: Arc::default(),
        })
    }

    /// Bind and start serving on a runtime thread of its own; returns the bound address.
    pub fn start(&self) -> io::Result<SocketAddr> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.is_some() {
            return Err(io::Error::other("the gateway is already started"));
        }
        let cfg = &self.shared.config;
        let listen = server::Listen {
            name: "shoal-gateway",
            threads: cfg.threads,
            host: &cfg.host,
            port: cfg.port,
            cert: &cfg.tls_cert,
            key: &cfg.tls_key,
            ca: &cfg.tls_ca,
            client_auth: cfg.tls_client_auth,
            send_buffer: cfg.max_message_bytes,
        };
        let shared = self.shared.clone();
        let handler = {
            let shared = shared.clone();
            move |req, respond| service::handle(shared.clone(), req, respond)
        };
        let rest = match cfg.rest_port {
            None => None,
            Some(port) => {
                let listener = crate::rest::bind(&cfg.host, port)?;
                let tls = if cfg.tls_cert.is_empty() {
                    None
                } else {
                    Some(server::server_tls_alpn(
                        &cfg.tls_cert,
                        &cfg.tls_key,
                        &cfg.tls_ca,
                        cfg.tls_client_auth,
                        &[b"http/1.1"],
                    )?)
                };
                *self.rest_address.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(listener.local_addr()?);
                Some((listener, tls))
            }
        };
        let rest_connections = self.rest_connections.clone();
        let (serving, local) = server::Serving::start(&listen, handler, move || {
            tokio::spawn(timer_anchor());
            if let Some((listener, tls)) = rest {
                tokio::spawn(crate::rest::serve(
                    shared.clone(),
                    listener,
                    tls,
                    rest_connections,
                ));
            }
            tokio::spawn(shadow::run(shared));
        })?;
        *running = Some(serving);
        *self.address.lock().unwrap_or_else(|p| p.into_inner()) = Some(local);
        Ok(local)
    }

    pub fn address(&self) -> Option<SocketAddr> {
        *self.address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The REST listener's bound address (None without one, or before `start`).
    pub fn rest_address(&self) -> Option<SocketAddr> {
        *self.rest_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drain and stop: health NOT_SERVING, stop accepting, GOAWAY to every connection, wait
    /// up to `grace` for open streams to finish, then end whatever is left. Blocking.
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
        // REST connections finish the request they are answering, then close.
        let until = std::time::Instant::now() + grace;
        while self.rest_connections.open() > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        run.finish(
            until.saturating_duration_since(std::time::Instant::now()),
            || {},
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}
