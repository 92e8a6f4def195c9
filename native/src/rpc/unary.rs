//! Unary gRPC calls as both fronts answer them: read the one request message (bounded,
//! decompressed), and send an answer with HEADERS, DATA and trailers queued together.

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use prost::Message;

use super::grpc::{self, Code, Status};

pub fn encode(m: &impl Message) -> Bytes {
    grpc::frame(&m.encode_to_vec())
}

/// What a unary call answers.
pub enum Answer {
    /// The framed message, then `grpc-status: 0` and an extra trailer.
    Message(Bytes, Option<(http::HeaderName, &'static str)>),
    /// The framed message, then `grpc-status: 0` and these trailers.
    MessageWithTrailers(Bytes, HeaderMap),
    /// A trailers-only answer carrying the status.
    Failure(Status),
    /// A trailers-only answer carrying the status and an extra header
    /// (`shoal-retry: elsewhere`).
    FailureWith(Status, (http::HeaderName, &'static str)),
}

impl From<Result<Bytes, Status>> for Answer {
    fn from(r: Result<Bytes, Status>) -> Answer {
        match r {
            Ok(framed) => Answer::Message(framed, None),
            Err(s) => Answer::Failure(s),
        }
    }
}

/// Response headers, with the status when the answer is trailers-only.
pub fn headers(status: Option<&Status>) -> Response<()> {
    let mut resp = Response::new(());
    grpc::response_headers(resp.headers_mut());
    if let Some(s) = status {
        s.to_headers(resp.headers_mut());
    }
    resp
}

/// Send `answer`: HEADERS, DATA and the trailers are queued together (one write).
pub fn send(mut respond: SendResponse<Bytes>, answer: Answer) {
    match answer {
        Answer::Message(framed, extra) => {
            let Ok(mut stream) = respond.send_response(headers(None), false) else {
                return;
            };
            let mut trailers = HeaderMap::new();
            Status::new(Code::Ok, "").to_headers(&mut trailers);
            if let Some((k, v)) = extra {
                trailers.insert(k, HeaderValue::from_static(v));
            }
            if stream.send_data(framed, false).is_ok() {
                let _ = stream.send_trailers(trailers);
            }
        }
        Answer::MessageWithTrailers(framed, mut trailers) => {
            let Ok(mut stream) = respond.send_response(headers(None), false) else {
                return;
            };
            Status::new(Code::Ok, "").to_headers(&mut trailers);
            if stream.send_data(framed, false).is_ok() {
                let _ = stream.send_trailers(trailers);
            }
        }
        Answer::Failure(status) => {
            let _ = respond.send_response(headers(Some(&status)), true);
        }
        Answer::FailureWith(status, (k, v)) => {
            let mut resp = headers(Some(&status));
            resp.headers_mut().insert(k, HeaderValue::from_static(v));
            let _ = respond.send_response(resp, true);
        }
    }
}

/// The request's one message, or the status to answer with.
pub async fn read_message(
    req: Request<RecvStream>,
    max: usize,
) -> Result<(HeaderMap, Bytes), Status> {
    let (parts, mut body) = req.into_parts();
    let body = match grpc::collect(&mut body, max + 5).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("Received message larger than max (over {max} bytes)"),
            ))
        }
        Err(e) => {
            return Err(Status::new(
                Code::Cancelled,
                format!("request body broke off: {e}"),
            ))
        }
    };
    let encoding = parts
        .headers
        .get(grpc::names::GRPC_ENCODING)
        .and_then(|v| v.to_str().ok());
    let msg = grpc::unary_message(&body, encoding, max).map_err(|e| match e {
        grpc::FrameError::TooLarge(..) => Status::new(Code::ResourceExhausted, e.to_string()),
        grpc::FrameError::Encoding(_) => Status::new(Code::Unimplemented, e.to_string()),
        _ => Status::new(Code::Internal, e.to_string()),
    })?;
    Ok((parts.headers, msg))
}

/// Resolves when the client resets the stream (it went away, or its deadline passed).
pub async fn reset(respond: &mut SendResponse<Bytes>) {
    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
}
