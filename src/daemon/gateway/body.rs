//! The response body wrapper: counts bytes, scrubs secrets as they stream, and reports the
//! count once when the body ends or is dropped (so aborted transfers are logged too).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};
use crate::secrets::Scrubber;

pub struct ObservedBody {
    inner: ProxyBody,
    scrubber: Option<Scrubber>,
    bytes: u64,
    finished: bool,
    on_done: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl ObservedBody {
    pub fn new(
        inner: ProxyBody,
        scrubber: Option<Scrubber>,
        on_done: impl FnOnce(u64) + Send + 'static,
    ) -> ObservedBody {
        ObservedBody {
            inner,
            scrubber,
            bytes: 0,
            finished: false,
            on_done: Some(Box::new(on_done)),
        }
    }

    pub fn boxed(self) -> ProxyBody {
        BodyExt::boxed_unsync(self)
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    this.bytes += data.len() as u64;
                    let out = match &mut this.scrubber {
                        Some(s) => s.push_bytes(data).unwrap_or_default(),
                        None => data,
                    };
                    Poll::Ready(Some(Ok(Frame::data(out))))
                }
                // Trailers are not forwarded: they could carry what the scrubber removes.
                Err(_trailers) => Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => {
                this.finished = true;
                let rest = this.scrubber.as_mut().map(Scrubber::finish);
                if let Some(f) = this.on_done.take() {
                    f(this.bytes);
                }
                match rest {
                    Some(rest) if !rest.is_empty() => {
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrubber.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(self.bytes);
        }
    }
}
