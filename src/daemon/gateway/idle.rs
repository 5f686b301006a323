//! The idle timeout, enforced in one place for every wait: each socket of a client's
//! connection (the client's own and the upstreams dialled for it) is wrapped in [`IdleIo`],
//! which notes the time of every read or write that moved bytes; a [`watchdog`] ends the
//! connection's work once no byte moved either way for the idle time. So a stalled request
//! body, an upstream that never answers and a client that stops reading are all covered,
//! whatever the protocol state.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When bytes last moved on any socket of one client connection.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Milliseconds since `base`.
    last: AtomicU64,
    timed_out: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the watchdog ended this connection.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// Returns once nothing moved for `idle` (and marks the connection timed out).
pub async fn watchdog(activity: Arc<Activity>, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let last = activity.last.load(Ordering::Relaxed);
        let now = activity.now_ms();
        let quiet = now.saturating_sub(last);
        if quiet >= idle_ms {
            activity.timed_out.store(true, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// A socket that reports its traffic to an [`Activity`].
pub struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> IdleIo<T> {
        activity.touch();
        IdleIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn watchdog_fires_only_after_quiet() {
        let activity = Activity::new();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, activity.clone());
        let dog = tokio::spawn(watchdog(activity.clone(), Duration::from_millis(400)));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            a.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b.read_exact(&mut one).await.unwrap();
            assert!(!dog.is_finished(), "traffic keeps the connection");
        }
        tokio::time::timeout(Duration::from_secs(5), dog)
            .await
            .expect("the watchdog fires once nothing moves")
            .unwrap();
        assert!(activity.timed_out());
    }
}
