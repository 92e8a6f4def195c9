//! A front door: accept connections (h2c, or TLS with ALPN h2), serve HTTP/2 on each (h2),
//! and shut down gracefully (stop accepting, GOAWAY to every connection, let open streams
//! finish) when told to. What each stream answers is the caller's `handler`.

use std::fs;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;

/// Open connections, so a stop can wait for them to finish.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one stream (request and its response handle); runs within its connection's task.
pub trait Handler:
    Fn(Request<RecvStream>, SendResponse<Bytes>) -> Self::Answer + Clone + Send + Sync + 'static
{
    type Answer: Future<Output = ()> + Send + 'static;
}

impl<H, F> Handler for H
where
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    type Answer = F;
}

/// Accept until `stop` turns true, then return (dropping the listener: no new connections).
/// `send_buffer`: the largest message answered (bounds each stream's send buffer).
pub async fn accept_loop<H: Handler>(
    handler: H,
    send_buffer: usize,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => return,
        };
        let (tcp, _) = match accepted {
            Ok(x) => x,
            Err(_) => {
                // Out of descriptors or a connection reset before accept: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.open.fetch_add(1, Ordering::AcqRel);
        let open = Open(connections.clone());
        let handler = handler.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => serve_connection(handler, send_buffer, tcp, stop).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    if let Ok(Ok(stream)) = handshake {
                        serve_connection(handler, send_buffer, stream, stop).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<H, I>(
    handler: H,
    send_buffer: usize,
    io: I,
    mut stop: watch::Receiver<bool>,
) where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 16)
        .max_concurrent_streams(1024)
        .max_header_list_size(64 << 10)
        .max_send_buffer_size(send_buffer.clamp(1 << 16, 4 << 20))
        .handshake::<_, Bytes>(io);
    let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(10), handshake).await else {
        return;
    };
    // `accept` drives the connection (reads, writes, flow control): it is polled while the
    // connection's streams are answered, all within this one task (no task per request).
    let mut streams = FuturesUnordered::new();
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => streams.push(handler(req, respond)),
                _ => break,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            _ = stopped(&mut stop), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
    // The connection is closed (after a graceful shutdown, once every stream was answered):
    // whatever is left can no longer be sent and is dropped (cancelled).
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn read(path: &str) -> io::Result<Vec<u8>> {
    fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read TLS file {path}: {e}")))
}

fn certs(path: &str) -> io::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::other(format!("no certificate in {path}")));
    }
    Ok(certs)
}

fn key(path: &str) -> io::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut &pem[..])?
        .ok_or_else(|| io::Error::other(format!("no private key in {path}")))
}

fn roots(path: &str) -> io::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(io::Error::other)?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS for the listener: `cert`/`key`, and with `client_auth` a client certificate that
/// chains to `ca` is required.
pub fn server_tls(
    cert: &str,
    key_path: &str,
    ca: &str,
    client_auth: bool,
) -> io::Result<TlsAcceptor> {
    server_tls_alpn(cert, key_path, ca, client_auth, &[b"h2"])
}

/// `server_tls` offering the `alpn` protocols (`http/1.1` for the REST listener).
pub fn server_tls_alpn(
    cert: &str,
    key_path: &str,
    ca: &str,
    client_auth: bool,
    alpn: &[&[u8]],
) -> io::Result<TlsAcceptor> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = if client_auth && !ca.is_empty() {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(ca)?),
            provider(),
        )
        .build()
        .map_err(io::Error::other)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(io::Error::other)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS for calls to workers: verify them against `ca`; present `cert`/`key` when given
/// (mutual TLS).
pub fn client_tls(ca: &str, cert: &str, key_path: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots(ca)?);
    let mut config = if !cert.is_empty() && !key_path.is_empty() {
        builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(io::Error::other)?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Where and how a server listens.
pub struct Listen<'a> {
    /// The runtime thread's name (and its workers').
    pub name: &'static str,
    /// Runtime threads: 1 runs a current-thread runtime.
    pub threads: usize,
    pub host: &'a str,
    pub port: u16,
    /// TLS when `cert` is not empty (`server_tls`'s arguments).
    pub cert: &'a str,
    pub key: &'a str,
    pub ca: &'a str,
    pub client_auth: bool,
    /// The largest message answered (see `accept_loop`).
    pub send_buffer: usize,
}

/// A server running on a thread of its own, until `stop`.
pub struct Serving {
    thread: std::thread::JoinHandle<()>,
    stop_accepting: watch::Sender<bool>,
    halt: tokio::sync::oneshot::Sender<()>,
    connections: Arc<Connections>,
}

impl Serving {
    /// Bind `listen`'s address, then serve with `handler` on a runtime of its own, after
    /// spawning `background`'s tasks on it; the bound address.
    pub fn start<H: Handler, B: FnOnce() + Send + 'static>(
        listen: &Listen<'_>,
        handler: H,
        background: B,
    ) -> io::Result<(Serving, std::net::SocketAddr)> {
        let runtime = if listen.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(listen.threads)
                .thread_name(listen.name)
                .enable_all()
                .build()?
        };
        let tls = if listen.cert.is_empty() {
            None
        } else {
            Some(server_tls(
                listen.cert,
                listen.key,
                listen.ca,
                listen.client_auth,
            )?)
        };
        let addr = format!("{}:{}", listen.host, listen.port);
        let listener = runtime.block_on(async { TcpListener::bind(&addr).await })?;
        let local = listener.local_addr()?;
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (halt, halted) = tokio::sync::oneshot::channel::<()>();
        let connections = Arc::new(Connections::default());
        let conns = connections.clone();
        let send_buffer = listen.send_buffer;
        let thread = std::thread::Builder::new()
            .name(listen.name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    background();
                    tokio::spawn(accept_loop(
                        handler,
                        send_buffer,
                        listener,
                        tls,
                        conns,
                        stop_rx,
                    ));
                    let _ = halted.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        let serving = Serving {
            thread,
            stop_accepting,
            halt,
            connections,
        };
        Ok((serving, local))
    }

    /// Stop accepting: GOAWAY to every connection, whose open streams may finish.
    pub fn stop_accepting(&self) {
        let _ = self.stop_accepting.send(true);
    }

    /// Wait up to `grace` for the open connections to finish, call `before_halt`, then end
    /// whatever is left and join the thread. Blocking.
    pub fn finish(self, grace: Duration, before_halt: impl FnOnce()) {
        let until = std::time::Instant::now() + grace;
        while self.connections.open() > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        before_halt();
        let _ = self.halt.send(());
        let _ = self.thread.join();
    }
}
