//! grpc.health.v1 `Watch`: the serving status now, then every change, until the client goes
//! away or the gateway stops (the stream then ends with UNAVAILABLE).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tokio::sync::mpsc;

use super::body::OutBody;
use super::grpc::{self, Code, Status};
use super::oip::{HealthCheckRequest, HealthCheckResponse};
use super::service::failure;
use super::Shared;

pub async fn watch(shared: Arc<Shared>, req: Request<Incoming>) -> Response<OutBody> {
    let body = match http_body_util::Limited::new(req.into_body(), 1 << 16)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return failure(&Status::new(
                Code::InvalidArgument,
                "malformed HealthCheckRequest",
            ))
        }
    };
    let service = match grpc::unary_message(&body, None, 1 << 16)
        .ok()
        .and_then(|m| HealthCheckRequest::decode(&m[..]).ok())
    {
        Some(r) => r.service,
        None => {
            return failure(&Status::new(
                Code::InvalidArgument,
                "malformed HealthCheckRequest",
            ))
        }
    };
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    let mut changes = shared.health.subscribe();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = shared.serving(&service);
            if last != Some(now) {
                last = Some(now);
                let msg = grpc::frame(&HealthCheckResponse::of(now).encode_to_vec());
                if tx.send(Frame::data(msg)).await.is_err() {
                    return; // the client went away
                }
            }
            if *changes.borrow_and_update() {
                let mut trailers = HeaderMap::new();
                Status::new(Code::Unavailable, "the gateway is shutting down")
                    .to_headers(&mut trailers);
                let _ = tx.send(Frame::trailers(trailers)).await;
                return;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp = Response::new(OutBody::Stream(rx));
    grpc::response_headers(resp.headers_mut());
    resp
}
