//! Over-size requests get RESOURCE_EXHAUSTED naming the limit and the flag that raises it.
//!
//! tonic refuses a message above its decoding limit with OUT_OF_RANGE, a code clients read
//! as "a value out of range" (and that AURA uses for event offsets older than retention).
//! This layer reads the 5-byte gRPC frame header of each request itself and ends the body
//! with RESOURCE_EXHAUSTED as soon as the header announces more than the limit — before
//! tonic sees the length, and before any of the message is buffered. tonic turns a body
//! error that is a `Status` into the call's status unchanged; the connection stays up.
//! Every Gateway method takes one request message, so the first header is the one to read;
//! tonic's own limit (the same number) remains behind it for anything else.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::Frame;
use tonic::{Status, body::Body, codegen::Bytes, codegen::http};

/// Limits request messages to `limit` bytes (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct MessageSizeLayer {
    limit: usize,
}

impl MessageSizeLayer {
    /// Refuses request messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MessageSizeLayer { limit }
    }
}

impl<S> tower::Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MessageSize { inner, limit: self.limit }
    }
}

/// See [`MessageSizeLayer`].
#[derive(Clone, Debug)]
pub struct MessageSize<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<Body>> for MessageSize<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(req.map(|body| Body::new(Limited { body, limit, header: Vec::with_capacity(5) })))
    }
}

/// A request body whose first gRPC frame header is checked against `limit`.
struct Limited {
    body: Body,
    limit: usize,
    /// The first bytes of the body, until the 5 of the frame header are in.
    header: Vec<u8>,
}

impl Limited {
    /// Collects header bytes from `data`; an error once the header announces too much.
    fn check(&mut self, data: &Bytes) -> Result<(), Status> {
        if self.header.len() >= 5 {
            return Ok(());
        }
        let wanted = 5 - self.header.len();
        self.header.extend_from_slice(&data[..wanted.min(data.len())]);
        if self.header.len() < 5 {
            return Ok(());
        }
        let announced = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
        if announced as usize > self.limit {
            return Err(Status::resource_exhausted(format!(
                "request message is {announced} bytes; the gateway accepts at most {} bytes \
                 (raise it with --max-message-bytes / AURA_MAX_MESSAGE_BYTES)",
                self.limit
            )));
        }
        Ok(())
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(limit: usize) -> Limited {
        Limited { body: Body::empty(), limit, header: Vec::new() }
    }

    #[test]
    fn the_announced_length_decides_even_across_chunks() {
        let mut l = limited(10);
        assert!(l.check(&Bytes::from_static(&[0, 0, 0])).is_ok());
        let err = l.check(&Bytes::from_static(&[0, 11, 1, 2, 3])).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--max-message-bytes"), "{}", err.message());
        let mut l = limited(10);
        assert!(l.check(&Bytes::from_static(&[0, 0, 0, 0, 10, 1, 2])).is_ok());
        // Later data is not a header.
        assert!(l.check(&Bytes::from_static(&[0, 255, 255, 255, 255])).is_ok());
    }
}
