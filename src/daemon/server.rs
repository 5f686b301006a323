//! The small HTTP/1.1 server under git-gate and supervise (the gateway, a proxy with its own
//! idle accounting and budgets, has its own loop): where a daemon listens and says so, a
//! bounded accept loop, a cap on and a deadline for every request head, the `/healthz`
//! readiness probe, and plain-text answers that name the daemon.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The largest request head read (hyper's minimum is 8192).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client that sends no complete request head for this long is dropped.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("Cannot listen on {addr}; is another bundle or program using that port?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read the listening address")]
    LocalAddr(#[source] std::io::Error),
    #[error("Cannot handle signals")]
    Signals(#[source] std::io::Error),
}

/// Binds `addr`, prints `listening` and the bound address on stderr (tests and the harness read
/// it: the port may be 0), and returns the listener with a future that completes on SIGTERM or
/// SIGINT.
pub async fn listen(
    addr: SocketAddr,
    listening: &str,
) -> Result<(TcpListener, impl Future<Output = ()> + use<>), ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(ListenError::LocalAddr)?;
    let mut stop = crate::sys::signals::Termination::listen().map_err(ListenError::Signals)?;
    eprintln!("{listening}{bound}");
    Ok((listener, async move {
        stop.recv().await;
    }))
}

/// Serves HTTP/1.1 clients of `listener` with `handle` until `stop` completes, at most
/// `max_connections` at once (waiting for a slot before accepting leaves extra clients in the
/// backlog).
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    max_connections: usize,
    stop: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = std::sync::Arc::new(Semaphore::new(max_connections.max(1)));
    let accept = async {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = stream.set_nodelay(true);
                        let svc = service_fn(move |req| {
                            let answer = handle(req, peer);
                            async move { Ok::<_, Infallible>(answer.await) }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEAD_TIMEOUT)
                            .max_buf_size(MAX_HEAD_BYTES)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = stop => {}
    }
}

/// The answer to the readiness probe when `req` is one (`GET /healthz`: `200`; another method
/// there: `405`).
pub fn healthz<E>(daemon: &str, req: &Request<Incoming>) -> Option<Response<BoxBody<Bytes, E>>> {
    (req.uri().path() == "/healthz").then(|| match *req.method() {
        Method::GET => text(daemon, StatusCode::OK, "ok"),
        _ => text(daemon, StatusCode::METHOD_NOT_ALLOWED, "GET only"),
    })
}

/// A plain-text answer, `krbottle DAEMON: MSG`, with the body a server boxes as it needs.
pub fn plain(daemon: &str, status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!(
        "krbottle {daemon}: {msg}\n"
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// [`plain`], boxed.
pub fn text<E>(daemon: &str, status: StatusCode, msg: &str) -> Response<BoxBody<Bytes, E>> {
    plain(daemon, status, msg).map(|body| body.map_err(|never| match never {}).boxed())
}
