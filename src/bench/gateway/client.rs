//! The bench's HTTP client: direct or through a proxy's CONNECT, TLS with the given roots,
//! HTTP/1.1; the latency and throughput loops.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    CLIENT_CREDENTIAL, CONCURRENCY, INJECTED_HEADER, LARGE_PATH, Latency, SMALL_PATH, STEP_TIMEOUT,
    Throughput,
};
use crate::bench::{ms, percentile};

pub(super) fn host_port(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// A direct connection to the upstream's address, with `host` as SNI and Host.
pub(super) fn direct_ip(port: u16, host: &str, tls: &Arc<rustls::ClientConfig>) -> Dial {
    Dial {
        proxy: None,
        connect_to: host_port(&Ipv4Addr::LOCALHOST.to_string(), port),
        sni: host.to_owned(),
        tls: tls.clone(),
        route: false,
    }
}

/// How a client reaches the upstream: directly or through a proxy's CONNECT.
#[derive(Clone)]
pub(super) struct Dial {
    pub(super) proxy: Option<SocketAddr>,
    /// `host:port` to dial (direct) or to name in the CONNECT (proxy).
    pub(super) connect_to: String,
    /// TLS server name, also the request's Host.
    pub(super) sni: String,
    pub(super) tls: Arc<rustls::ClientConfig>,
    /// A route: send a client credential and require the upstream to have seen the token.
    pub(super) route: bool,
}

type Sender = SendRequest<Empty<Bytes>>;

impl Dial {
    async fn connect(&self) -> anyhow::Result<Sender> {
        let setup = async {
            let tcp = match self.proxy {
                None => TcpStream::connect(&self.connect_to).await?,
                Some(proxy) => {
                    let mut tcp = TcpStream::connect(proxy).await?;
                    tcp.set_nodelay(true)?;
                    connect_tunnel(&mut tcp, &self.connect_to).await?;
                    tcp
                }
            };
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(self.sni.clone())?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {} failed", self.sni))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            anyhow::Ok(sender)
        };
        tokio::time::timeout(STEP_TIMEOUT, setup)
            .await
            .with_context(|| format!("Connecting to {} timed out", self.connect_to))?
    }

    /// GETs `path` on `sender`, checks the answer, returns the body's length.
    async fn get(&self, sender: &mut Sender, path: &str) -> anyhow::Result<usize> {
        let port = self.connect_to.rsplit_once(':').map_or("", |(_, p)| p);
        let mut req = Request::get(path).header(http::header::HOST, format!("{}:{port}", self.sni));
        if self.route {
            req = req.header(http::header::AUTHORIZATION, CLIENT_CREDENTIAL);
        }
        let req = req.body(Empty::new())?;
        let step = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let injected = resp.headers().contains_key(INJECTED_HEADER);
            if status != StatusCode::OK {
                let body = resp.into_body().collect().await?.to_bytes();
                bail!(
                    "GET {path} via {} answered {status}: {}",
                    self.connect_to,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            // Counted frame by frame: the client keeps no copy, leaving the cores to the proxies.
            let mut body = resp.into_body();
            let mut len = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    len += data.len();
                }
            }
            if self.route && !injected {
                bail!(
                    "The proxy at {:?} did not inject the route token: it is not intercepting",
                    self.proxy
                );
            }
            Ok(len)
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .with_context(|| format!("GET {path} via {} timed out", self.connect_to))?
    }
}

/// Sends `CONNECT authority` on `tcp` and reads the proxy's answer up to the end of its head.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> anyhow::Result<()> {
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    // The proxy sends nothing after the head until the TLS handshake starts, so reading in
    // chunks cannot swallow tunnel bytes.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            bail!("The proxy closed or overflowed the CONNECT {authority} answer");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    if text.split(' ').nth(1) != Some("200") {
        bail!(
            "The proxy refused CONNECT {authority}: {}",
            text.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// Percentiles of `[direct, gateway]`, one new connection per request, requests interleaved.
pub(super) async fn latency_new_connections(dials: &[Dial; 2], n: u32) -> anyhow::Result<Latency> {
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..n {
        for (dial, times) in dials.iter().zip(&mut times) {
            let t = Instant::now();
            let mut sender = dial.connect().await?;
            dial.get(&mut sender, SMALL_PATH).await?;
            times.push(t.elapsed());
        }
    }
    Ok(latency(times))
}

/// Percentiles of `[direct, gateway]` over one kept-alive connection each, interleaved.
pub(super) async fn latency_kept_alive(dials: &[Dial; 2], n: u32) -> anyhow::Result<Latency> {
    let mut senders = [dials[0].connect().await?, dials[1].connect().await?];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..n {
        for ((dial, sender), times) in dials.iter().zip(&mut senders).zip(&mut times) {
            let t = Instant::now();
            dial.get(sender, SMALL_PATH).await?;
            times.push(t.elapsed());
        }
    }
    Ok(latency(times))
}

fn latency([direct, gateway]: [Vec<Duration>; 2]) -> Latency {
    let p = |v: &Vec<Duration>, p| ms(percentile(v.clone(), p));
    let (d50, d99, g50, g99) = (
        p(&direct, 50),
        p(&direct, 99),
        p(&gateway, 50),
        p(&gateway, 99),
    );
    Latency {
        direct_p50_ms: d50,
        direct_p99_ms: d99,
        gateway_p50_ms: g50,
        gateway_p99_ms: g99,
        added_p50_ms: g50 - d50,
        added_p99_ms: g99 - d99,
    }
}

/// Sustained requests/s (small response) and MB/s (large response) over warm connections:
/// [`CONCURRENCY`] connections are opened and make one request each before any timing
/// (connection setup is what the latency rows measure); then every connection requests in a
/// loop for `window`, and the time runs until the last response has ended.
pub(super) async fn throughput(dial: &Dial, window: Duration) -> anyhow::Result<Throughput> {
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut sender = dial.connect().await?;
        dial.get(&mut sender, SMALL_PATH).await?;
        senders.push(sender);
    }
    let (small_time, small_requests, _, senders) =
        sustained(dial, senders, SMALL_PATH, window).await?;
    let (large_time, _, bytes, _) = sustained(dial, senders, LARGE_PATH, window).await?;
    Ok(Throughput {
        requests_per_s: small_requests as f64 / small_time.as_secs_f64(),
        mb_per_s: bytes as f64 / large_time.as_secs_f64() / 1e6,
    })
}

/// GETs `path` on every sender in a loop until `window` has passed; returns the wall time until
/// the last response ended, the requests and body bytes completed, and the senders.
async fn sustained(
    dial: &Dial,
    senders: Vec<Sender>,
    path: &'static str,
    window: Duration,
) -> anyhow::Result<(Duration, u64, u64, Vec<Sender>)> {
    let started = Instant::now();
    let deadline = started + window;
    let mut workers = tokio::task::JoinSet::new();
    for mut sender in senders {
        let dial = dial.clone();
        workers.spawn(async move {
            let (mut requests, mut bytes) = (0u64, 0u64);
            while Instant::now() < deadline {
                bytes += dial.get(&mut sender, path).await? as u64;
                requests += 1;
            }
            anyhow::Ok((requests, bytes, sender))
        });
    }
    let (mut requests, mut bytes, mut senders) = (0, 0, Vec::new());
    while let Some(done) = workers.join_next().await {
        let (r, b, sender) = done.context("A client task panicked")??;
        requests += r;
        bytes += b;
        senders.push(sender);
    }
    Ok((started.elapsed(), requests, bytes, senders))
}

pub(super) fn client_tls(ca_pems: &[&str]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.context("Bad CA certificate PEM")?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
