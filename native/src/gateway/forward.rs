//! Calls to workers: one pooled HTTP/2 connection per worker address (h2c, or mutual TLS
//! when configured), reopened on demand after it breaks. h2 directly: a request's HEADERS and
//! DATA frames are queued together and leave in one write.
//!
//! A call sends one framed request message and reads the whole answer (unary responses are
//! small: outputs for a few rows) so the gateway can decide to retry before anything reaches
//! the client. Failures are classified: the worker's own gRPC status (passed on to the client
//! or retried, see `service`), a connection that could not be made or broke (`Unreachable`,
//! retried on another member), or the deadline (`Deadline`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::buf::Chain;
use bytes::{Buf, Bytes};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::grpc::{self, format_timeout, Code, Status};

const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const STATISTICS: &str = "/inference.GRPCInferenceService/ModelStatistics";

/// Which worker method a call is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Infer,
    Statistics,
}

/// Trailing metadata of a worker refusal that another member may not give (a model's
/// concurrency line full on that worker): the next member is tried, nothing is ejected.
pub const RETRY_ELSEWHERE: &str = "elsewhere";
/// Trailing metadata of a worker's UNAVAILABLE that every member would give (the object
/// store is unreachable): answered at once, no other member tried, nothing ejected.
pub const RETRY_NOWHERE: &str = "nowhere";

/// What a worker's `shoal-retry` trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retry {
    /// No trailer: the gateway's own rules (UNAVAILABLE is retried elsewhere).
    #[default]
    Default,
    Elsewhere,
    Nowhere,
}

/// A framed request as three pieces sent as one DATA frame: the 5-byte gRPC header, the
/// client's message as received, and the appended version field.
pub type Payload = Chain<Chain<Bytes, Bytes>, Bytes>;

pub fn payload(parts: &[Bytes; 3]) -> Payload {
    parts[0]
        .clone()
        .chain(parts[1].clone())
        .chain(parts[2].clone())
}

/// A worker's answer.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    /// The response body as received (framed), when the status is OK.
    pub body: Bytes,
    pub retry: Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No connection could be made, or it broke before the answer came.
    #[error("{0}")]
    Unreachable(String),
    #[error("Deadline Exceeded")]
    Deadline,
}

/// One open connection: its request handle, and whether its driver task has ended.
#[derive(Clone)]
struct Conn {
    sender: h2::client::SendRequest<Payload>,
    closed: Arc<AtomicBool>,
}

struct Upstream {
    authority: Authority,
    /// `http://<address>/inference.GRPCInferenceService/ModelInfer`, built once.
    infer_uri: Uri,
    /// The same for ModelStatistics.
    statistics_uri: Uri,
    host: String,
    conn: Mutex<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    fn current(&self) -> Option<Conn> {
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    fn forget(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The connection pool (see the module doc).
pub struct Upstreams {
    conns: Mutex<HashMap<String, Arc<Upstream>>>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    connect_timeout: Duration,
    max_message_bytes: usize,
    /// Keepalive PING interval (zero: none); see `handshake`.
    ping: Duration,
}

impl Upstreams {
    pub fn new(
        tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
        connect_timeout: Duration,
        max_message_bytes: usize,
        ping: Duration,
    ) -> Upstreams {
        Upstreams {
            conns: Mutex::new(HashMap::new()),
            tls,
            connect_timeout,
            max_message_bytes,
            ping,
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
        let uri = |path: &'static str| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query(PathAndQuery::from_static(path))
                .build()
                .map_err(|e| CallError::Unreachable(format!("bad worker address {address:?}: {e}")))
        };
        let (infer_uri, statistics_uri) = (uri(INFER)?, uri(STATISTICS)?);
        let u = Arc::new(Upstream {
            infer_uri,
            statistics_uri,
            host: authority
                .host()
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
            authority,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        conns.insert(address.to_string(), u.clone());
        Ok(u)
    }

    async fn conn(&self, u: &Upstream) -> Result<Conn, CallError> {
        if let Some(c) = u.current() {
            return Ok(c);
        }
        // One connection attempt at a time per worker; the others wait and share it.
        let _one = u.connecting.lock().await;
        if let Some(c) = u.current() {
            return Ok(c);
        }
        let conn = self.connect(u).await?;
        *u.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self, u: &Upstream) -> Result<Conn, CallError> {
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
        match &self.tls {
            None => handshake(tcp, self.ping).await.map_err(|e| unreachable(&e)),
            Some(cfg) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(u.host.clone())
                    .map_err(|e| unreachable(&e))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(&e))?;
                handshake(tls, self.ping).await.map_err(|e| unreachable(&e))
            }
        }
    }

    /// Send one framed ModelInfer request (`payload`) to the worker at `address` and read
    /// the whole answer, within `timeout`.
    pub async fn infer(
        &self,
        address: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        self.call(address, Call::Infer, payload, timeout).await
    }

    /// `infer` for any of the worker methods the gateway calls.
    pub async fn call(
        &self,
        address: &str,
        method: Call,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let u = self.upstream(address)?;
        let work = async {
            let conn = self.conn(&u).await?;
            let broke = |e: &dyn std::fmt::Display| {
                CallError::Unreachable(format!("connection to worker {} failed: {e}", u.authority))
            };
            let mut sender = match conn.sender.ready().await {
                Ok(s) => s,
                Err(e) => {
                    u.forget();
                    return Err(broke(&e));
                }
            };
            let mut req = Request::new(());
            *req.method_mut() = Method::POST;
            *req.uri_mut() = match method {
                Call::Infer => u.infer_uri.clone(),
                Call::Statistics => u.statistics_uri.clone(),
            };
            let h = req.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(http::header::TE, HeaderValue::from_static("trailers"));
            if let Ok(v) = HeaderValue::from_str(&format_timeout(timeout)) {
                h.insert(grpc::names::GRPC_TIMEOUT, v);
            }
            // HEADERS and DATA are queued before the connection task runs: one write.
            let (response, mut stream) = sender.send_request(req, false).map_err(|e| broke(&e))?;
            stream.send_data(payload, true).map_err(|e| broke(&e))?;
            let resp = response.await.map_err(|e| broke(&e))?;
            let (parts, mut body) = resp.into_parts();
            if parts.status != http::StatusCode::OK {
                return Ok(Reply {
                    status: Status::new(
                        Code::from_http(parts.status.as_u16()),
                        format!("worker {} answered HTTP {}", u.authority, parts.status),
                    ),
                    body: Bytes::new(),
                    retry: Retry::Default,
                });
            }
            if let Some(status) = Status::from_headers(&parts.headers) {
                // Trailers-only: a failure (or an empty answer) without a body.
                return Ok(Reply {
                    status,
                    body: Bytes::new(),
                    retry: retry_hint(&parts.headers),
                });
            }
            let limit = self.max_message_bytes + 5;
            let Some(data) = grpc::collect(&mut body, limit)
                .await
                .map_err(|e| broke(&e))?
            else {
                return Ok(Reply {
                    status: Status::new(
                        Code::ResourceExhausted,
                        format!("worker answer is larger than {limit} bytes"),
                    ),
                    body: Bytes::new(),
                    retry: Retry::Default,
                });
            };
            let trailers = body
                .trailers()
                .await
                .map_err(|e| broke(&e))?
                .unwrap_or_default();
            let status = Status::from_headers(&trailers).unwrap_or_else(|| {
                Status::new(Code::Unknown, "worker answer ended without a grpc-status")
            });
            Ok(Reply {
                status,
                body: data,
                retry: retry_hint(&trailers),
            })
        };
        // Polled in place (no move of the large future into a timeout wrapper).
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = tokio::time::sleep(timeout) => Err(CallError::Deadline),
        }
    }
}

/// The HTTP/2 handshake; the connection is driven by a task of its own, which marks the
/// connection closed when it ends. With a `ping` interval, the task PINGs the worker that
/// often and closes the connection when a PING goes unanswered for twice the interval: a
/// worker whose host or link died (no RST, no FIN) is found out then, and the calls in flight
/// on it fail as unreachable, so they are retried on another member within their deadline.
async fn handshake<I>(io: I, ping: Duration) -> Result<Conn, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 16)
        .handshake::<_, Payload>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let pinger = if ping.is_zero() {
        None
    } else {
        connection.ping_pong()
    };
    tokio::spawn(async move {
        match pinger {
            None => {
                let _ = connection.await;
            }
            Some(mut pinger) => loop {
                let round = async {
                    tokio::time::sleep(ping).await;
                    tokio::time::timeout(2 * ping, pinger.ping(h2::Ping::opaque())).await
                };
                tokio::select! {
                    _ = &mut connection => break,
                    answered = round => if !matches!(answered, Ok(Ok(_))) {
                        break; // dropping the connection ends its streams
                    },
                }
            },
        }
        flag.store(true, Ordering::Release);
    });
    Ok(Conn { sender, closed })
}

fn retry_hint(map: &http::HeaderMap) -> Retry {
    let values = map.get_all(grpc::names::SHOAL_RETRY);
    if values
        .iter()
        .any(|v| v.as_bytes() == RETRY_NOWHERE.as_bytes())
    {
        Retry::Nowhere
    } else if values
        .iter()
        .any(|v| v.as_bytes() == RETRY_ELSEWHERE.as_bytes())
    {
        Retry::Elsewhere
    } else {
        Retry::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(values: &[&str]) -> Retry {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(grpc::names::SHOAL_RETRY, HeaderValue::from_str(v).unwrap());
        }
        retry_hint(&map)
    }

    #[test]
    fn the_retry_trailer_is_read_nowhere_first() {
        assert_eq!(hint(&[]), Retry::Default);
        assert_eq!(hint(&["elsewhere"]), Retry::Elsewhere);
        assert_eq!(hint(&["nowhere"]), Retry::Nowhere);
        assert_eq!(hint(&["elsewhere", "nowhere"]), Retry::Nowhere);
        assert_eq!(hint(&["later"]), Retry::Default);
    }
}
