//! Streaming gRPC calls: the request messages one by one as they arrive (bounded,
//! decompressed), and responses sent under HTTP/2 flow control, so a client that stops
//! reading holds the sender back instead of growing the gateway's buffers.

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};

use super::grpc::{self, Code, Status};

/// Reads successive gRPC messages from a request body.
pub struct MessageReader {
    body: RecvStream,
    buf: BytesMut,
    max: usize,
    encoding: Option<String>,
    ended: bool,
}

impl MessageReader {
    /// `max`: the largest message accepted (decompressed); `encoding`: `grpc-encoding`.
    pub fn new(body: RecvStream, max: usize, encoding: Option<String>) -> MessageReader {
        MessageReader {
            body,
            buf: BytesMut::new(),
            max,
            encoding,
            ended: false,
        }
    }

    /// The next message; `Ok(None)` when the client half-closed the stream between messages;
    /// an error status for a body that breaks off, a message over `max`, or a bad frame.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > self.max {
                    return Err(Status::new(
                        Code::ResourceExhausted,
                        format!("Received message larger than max ({len} vs. {})", self.max),
                    ));
                }
                if self.buf.len() >= 5 + len {
                    let framed = self.buf.split_to(5 + len).freeze();
                    return grpc::unary_message(&framed, self.encoding.as_deref(), self.max)
                        .map(Some)
                        .map_err(|e| match e {
                            grpc::FrameError::TooLarge(..) => {
                                Status::new(Code::ResourceExhausted, e.to_string())
                            }
                            grpc::FrameError::Encoding(_) => {
                                Status::new(Code::Unimplemented, e.to_string())
                            }
                            _ => Status::new(Code::Internal, e.to_string()),
                        });
                }
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::new(
                        Code::Internal,
                        "request stream ended inside a message",
                    ))
                };
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Err(Status::new(
                        Code::Cancelled,
                        format!("request stream broke off: {e}"),
                    ))
                }
                None => self.ended = true,
            }
        }
    }
}

/// Send `data` on `stream` as the peer's flow-control window opens (never more buffered
/// than the connection's send buffer allows). Err when the stream is gone.
pub async fn send_flow_controlled(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while data.has_remaining() {
        stream.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, false)?;
    }
    Ok(())
}
