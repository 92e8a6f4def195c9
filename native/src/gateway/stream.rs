//! Triton's `ModelStreamInfer`: a bidirectional stream of ModelInferRequests. Each request is
//! routed on its own, exactly as a unary ModelInfer (key, version, quota, shard, retries);
//! up to `IN_FLIGHT` run at once and each response leaves as it completes, carrying its
//! request's id. A failing request answers `error_message` (with the id) and the stream goes
//! on; only a broken stream (a bad frame, an oversize message) ends it with a status. When
//! the gateway stops, the stream stops reading, answers what it holds, and ends UNAVAILABLE.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request};
use prost::Message;

use super::oip::{RoutingHeader, StreamError};
use super::Shared;
use crate::rpc::grpc::{self, Code, Status};
use crate::rpc::stream::{send_flow_controlled, MessageReader};
use crate::rpc::unary::headers;

/// Requests of one stream running at once; more wait in the client's flow-control window.
pub const IN_FLIGHT: usize = 64;

/// One ModelStreamInferResponse, framed: the worker's ModelInferResponse as field 2 (its
/// bytes as they came, not re-encoded), or field 1 with the error and the request's id.
fn response(request: &[u8], result: Result<Bytes, Status>) -> Bytes {
    match result {
        Ok(framed) if framed.len() >= 5 && framed[0] == 0 => {
            let inner = framed.slice(5..);
            let mut msg = BytesMut::with_capacity(inner.len() + 16);
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut msg);
            prost::encoding::encode_varint(inner.len() as u64, &mut msg);
            msg.put_slice(&inner);
            grpc::frame(&msg)
        }
        Ok(_) => response(
            request,
            Err(Status::new(Code::Internal, "malformed worker response")),
        ),
        Err(status) => {
            let header = RoutingHeader::decode(request).unwrap_or_default();
            grpc::frame(
                &StreamError {
                    error_message: status.message,
                    infer_response: Some(header),
                }
                .encode_to_vec(),
            )
        }
    }
}

async fn one(shared: Arc<Shared>, headers: Arc<HeaderMap>, msg: Bytes) -> Bytes {
    let start = Instant::now();
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = shared.infer(&headers, msg.clone()).await;
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    let code = result.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
    shared.stats.request(code, start.elapsed().as_secs_f64());
    response(&msg, result)
}

pub async fn stream_infer(
    shared: Arc<Shared>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, body) = req.into_parts();
    // A missing or wrong key ends the stream at once, as the unary call is refused.
    if let Err(status) = shared.principal(&parts.headers) {
        let _ = respond.send_response(headers(Some(&status)), true);
        return;
    }
    let encoding = parts
        .headers
        .get(grpc::names::GRPC_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut reader = MessageReader::new(body, shared.config.max_message_bytes, encoding);
    let Ok(mut out) = respond.send_response(headers(None), false) else {
        return;
    };
    let headers = Arc::new(parts.headers);
    let mut stopping = shared.health.subscribe();
    let mut pending = FuturesUnordered::new();
    let mut reading = true;
    let mut end = Status::new(Code::Ok, "");
    loop {
        if *stopping.borrow_and_update() && reading {
            reading = false;
            end = Status::new(Code::Unavailable, "the gateway is shutting down");
        }
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            next = reader.next(), if reading && pending.len() < IN_FLIGHT => match next {
                Ok(Some(msg)) => pending.push(one(shared.clone(), headers.clone(), msg)),
                Ok(None) => reading = false,
                Err(status) => {
                    reading = false;
                    end = status;
                }
            },
            Some(answer) = pending.next(), if !pending.is_empty() => {
                if send_flow_controlled(&mut out, answer).await.is_err() {
                    return; // the client went away
                }
            }
            r = stopping.changed(), if reading => if r.is_err() { reading = false },
            _ = std::future::poll_fn(|cx| out.poll_reset(cx)) => return,
        }
    }
    let mut trailers = HeaderMap::new();
    end.to_headers(&mut trailers);
    let _ = out.send_trailers(trailers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_wraps_the_worker_bytes_as_field_two() {
        let inner = RoutingHeader {
            model_name: "t/m".into(),
            model_version: "1".into(),
            id: "r7".into(),
        }
        .encode_to_vec();
        let framed = response(b"", Ok(grpc::frame(&inner)));
        let msg = grpc::unary_message(&framed, None, 1 << 20).expect("one message");
        let back = StreamError::decode(&msg[..]).expect("decodes");
        assert_eq!(back.error_message, "");
        let got = back.infer_response.expect("field 2");
        assert_eq!((got.model_name.as_str(), got.id.as_str()), ("t/m", "r7"));
    }

    #[test]
    fn a_failure_carries_the_message_and_the_request_id() {
        let request = RoutingHeader {
            model_name: "t/m".into(),
            model_version: String::new(),
            id: "abc".into(),
        }
        .encode_to_vec();
        let framed = response(
            &request,
            Err(Status::new(Code::NotFound, "unknown model t/m")),
        );
        let msg = grpc::unary_message(&framed, None, 1 << 20).expect("one message");
        let back = StreamError::decode(&msg[..]).expect("decodes");
        assert_eq!(back.error_message, "unknown model t/m");
        assert_eq!(back.infer_response.expect("id").id, "abc");
        // A request that does not even decode still gets an answer.
        let framed = response(b"\xff\xff", Err(Status::new(Code::InvalidArgument, "bad")));
        let msg = grpc::unary_message(&framed, None, 1 << 20).expect("one message");
        assert_eq!(
            StreamError::decode(&msg[..])
                .expect("decodes")
                .error_message,
            "bad"
        );
    }
}
