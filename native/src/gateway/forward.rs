//! Calls to workers: one pooled HTTP/2 connection per worker address (h2c, or mutual TLS
//! when configured), reopened on demand after it breaks.
//!
//! A call sends one framed request message and reads the whole answer (unary responses are
//! small: outputs for a few rows) so the gateway can decide to retry before anything reaches
//! the client. Failures are classified: the worker's own gRPC status (passed on to the client
//! or retried, see `service`), a connection that could not be made or broke (`Unreachable`,
//! retried on another member), or the deadline (`Deadline`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::grpc::{format_timeout, Chunks, Code, Status};

/// Trailing metadata of a worker refusal that another member may not give (a model's
/// concurrency line full on that worker): the next member is tried, nothing is ejected.
pub const RETRY_ELSEWHERE: (&str, &str) = ("shoal-retry", "elsewhere");

/// A worker's answer.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    /// The response body as received (framed), when the status is OK.
    pub body: Bytes,
    pub retry_elsewhere: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No connection could be made, or it broke before the answer came.
    #[error("{0}")]
    Unreachable(String),
    #[error("Deadline Exceeded")]
    Deadline,
}

struct Upstream {
    authority: Authority,
    host: String,
    sender: Mutex<Option<SendRequest<Chunks>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    fn current(&self) -> Option<SendRequest<Chunks>> {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget(&self) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The connection pool (see the module doc).
pub struct Upstreams {
    conns: Mutex<HashMap<String, Arc<Upstream>>>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    connect_timeout: Duration,
    max_message_bytes: usize,
}

impl Upstreams {
    pub fn new(
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
        connect_timeout: Duration,
        max_message_bytes: usize,
    ) -> Upstreams {
        Upstreams {
            conns: Mutex::new(HashMap::new()),
            tls,
            connect_timeout,
            max_message_bytes,
        }
    }

    fn upstream(&self, address: &str) -> Result<Arc<Upstream>, CallError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = conns.get(address) {
            return Ok(u.clone());
        }
        let authority: Authority = address
            .parse()
            .map_err(|_| CallError::Unreachable(format!("bad worker address {address:?}")))?;
        let u = Arc::new(Upstream {
            host: authority
                .host()
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
            authority,
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        conns.insert(address.to_string(), u.clone());
        Ok(u)
    }

    async fn sender(&self, u: &Upstream) -> Result<SendRequest<Chunks>, CallError> {
        if let Some(s) = u.current() {
            return Ok(s);
        }
        // One connection attempt at a time per worker; the others wait and share it.
        let _one = u.connecting.lock().await;
        if let Some(s) = u.current() {
            return Ok(s);
        }
        let sender = self.connect(u).await?;
        *u.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self, u: &Upstream) -> Result<SendRequest<Chunks>, CallError> {
        let addr = u.authority.as_str();
        let unreachable = |e: &dyn std::fmt::Display| {
            CallError::Unreachable(format!("cannot connect to worker {addr}: {e}"))
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"connect timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let builder = {
            let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10));
            b
        };
        match &self.tls {
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| unreachable(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
            Some(cfg) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(u.host.clone())
                    .map_err(|e| unreachable(&e))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(&e))?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| unreachable(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
        }
    }

    /// Send one framed message (`body`) to `path` on the worker at `address` and read the
    /// whole answer, within `timeout`.
    pub async fn call(
        &self,
        address: &str,
        path: &'static str,
        body: Chunks,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let u = self.upstream(address)?;
        let work = async {
            let mut sender = self.sender(&u).await?;
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(u.authority.clone())
                .path_and_query(PathAndQuery::from_static(path))
                .build()
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let mut req = Request::new(body);
            *req.method_mut() = Method::POST;
            *req.uri_mut() = uri;
            let h = req.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(http::header::TE, HeaderValue::from_static("trailers"));
            if let Ok(v) = HeaderValue::from_str(&format_timeout(timeout)) {
                h.insert("grpc-timeout", v);
            }
            let broke = |e: &dyn std::fmt::Display| {
                CallError::Unreachable(format!("connection to worker {} failed: {e}", u.authority))
            };
            if let Err(e) = sender.ready().await {
                u.forget();
                return Err(broke(&e));
            }
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) => {
                    if sender.is_closed() {
                        u.forget();
                    }
                    return Err(broke(&e));
                }
            };
            let (parts, body) = resp.into_parts();
            if parts.status != http::StatusCode::OK {
                return Ok(Reply {
                    status: Status::new(
                        Code::from_http(parts.status.as_u16()),
                        format!("worker {} answered HTTP {}", u.authority, parts.status),
                    ),
                    body: Bytes::new(),
                    retry_elsewhere: false,
                });
            }
            if let Some(status) = Status::from_headers(&parts.headers) {
                // Trailers-only: a failure (or an empty answer) without a body.
                let retry_elsewhere = retry_elsewhere(&parts.headers);
                return Ok(Reply {
                    status,
                    body: Bytes::new(),
                    retry_elsewhere,
                });
            }
            let collected = Limited::new(body, self.max_message_bytes + 5)
                .collect()
                .await
                .map_err(|e| broke(&e))?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let status = Status::from_headers(&trailers).unwrap_or_else(|| {
                Status::new(Code::Unknown, "worker answer ended without a grpc-status")
            });
            let retry_elsewhere = retry_elsewhere(&trailers);
            Ok(Reply {
                status,
                body: collected.to_bytes(),
                retry_elsewhere,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Deadline),
        }
    }
}

fn retry_elsewhere(map: &http::HeaderMap) -> bool {
    map.get_all(RETRY_ELSEWHERE.0)
        .iter()
        .any(|v| v.as_bytes() == RETRY_ELSEWHERE.1.as_bytes())
}
