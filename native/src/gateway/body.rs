//! The gateway's response body: a unary answer, or a stream of frames (health Watch).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::grpc::Chunks;

pub enum OutBody {
    Unary(Chunks),
    /// Frames pushed by a task; the stream ends when the task drops its sender.
    Stream(mpsc::Receiver<Frame<Bytes>>),
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            OutBody::Unary(c) => Pin::new(c).poll_frame(cx),
            OutBody::Stream(rx) => rx.poll_recv(cx).map(|f| f.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Unary(c) => c.is_end_stream(),
            OutBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Unary(c) => c.size_hint(),
            OutBody::Stream(_) => SizeHint::default(),
        }
    }
}
