//! grpc.health.v1 `Watch`, for the gateway and the worker front: the serving status now,
//! then every change, until the client goes away or the server stops (the stream then ends
//! with UNAVAILABLE).

use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request};
use prost::Message;
use tokio::sync::watch;

use super::grpc::{self, Code, Status};
use super::unary::headers;
use crate::gateway::oip::{HealthCheckRequest, HealthCheckResponse, Serving};

/// What a server tells its health watchers.
pub trait Health: Send + Sync + 'static {
    /// The status of `service` ("" for the whole server) now.
    fn status(&self, service: &str) -> Serving;
    /// Sent on every change of status; its value turns true when the server stops.
    fn watchers(&self) -> &watch::Sender<bool>;
    /// How the end of the stream names the server ("the gateway", "this worker").
    fn who(&self) -> &'static str;
}

pub async fn watch<H: Health>(
    shared: Arc<H>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let mut body = req.into_body();
    let service = match grpc::collect(&mut body, 1 << 16).await {
        Ok(Some(b)) => grpc::unary_message(&b, None, 1 << 16)
            .ok()
            .and_then(|m| HealthCheckRequest::decode(&m[..]).ok())
            .map(|r| r.service),
        _ => None,
    };
    let Some(service) = service else {
        let status = Status::new(Code::InvalidArgument, "malformed HealthCheckRequest");
        let _ = respond.send_response(headers(Some(&status)), true);
        return;
    };
    let Ok(mut stream) = respond.send_response(headers(None), false) else {
        return;
    };
    let mut changes = shared.watchers().subscribe();
    let mut last = None;
    loop {
        let now = shared.status(&service);
        if last != Some(now) {
            last = Some(now);
            let msg = grpc::frame(&HealthCheckResponse::of(now).encode_to_vec());
            if stream.send_data(msg, false).is_err() {
                return; // the client went away
            }
        }
        if *changes.borrow_and_update() {
            let mut trailers = HeaderMap::new();
            Status::new(
                Code::Unavailable,
                format!("{} is shutting down", shared.who()),
            )
            .to_headers(&mut trailers);
            let _ = stream.send_trailers(trailers);
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        }
    }
}
