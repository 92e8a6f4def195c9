//! KServe V2 REST on the gateway's own port (Triton's 8000 beside gRPC's 8001), served by
//! hyper's HTTP/1.1 server on the gateway's runtime. Every call goes through the same code as
//! its gRPC twin (`gateway::service`, `gateway::repository`): keys, quotas, version
//! resolution, traffic split, shadow, retries. Inference bodies are converted natively
//! (`tensors`); answers are JSON, errors `{"error": "..."}` with Triton's HTTP statuses.
//!
//! Stopping: when the gateway stops (its health watch turns true) the listener closes and
//! each connection finishes the request it is answering, then closes.

pub mod api;
pub mod tensors;

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::gateway::Shared;

/// Open REST connections (a stop waits for them).
#[derive(Default)]
pub struct Connections(AtomicUsize);

impl Connections {
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accept REST connections until the gateway stops.
pub async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(_) => return,
    };
    let mut stop = shared.health.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        connections.0.fetch_add(1, Ordering::AcqRel);
        let open = Open(connections.clone());
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => connection(shared, tcp).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    if let Ok(Ok(stream)) = handshake {
                        connection(shared, stream).await;
                    }
                }
            }
        });
    }
}

async fn connection<I>(shared: Arc<Shared>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = shared.health.subscribe();
    let service = {
        let shared = shared.clone();
        service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(api::handle(shared, req).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(256 << 10)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Bind the REST listener (before the runtime starts, so errors reach the caller).
pub fn bind(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(format!("{host}:{port}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A response with a body and content type.
pub fn reply(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}
