//! `krbottle bench gateway`: the gateway's cost, against a direct connection and against
//! mitmproxy doing the same interception, in one run, on 127.0.0.1 only.
//!
//! The client and an HTTPS upstream (rustls + hyper, HTTP/1.1, its own CA minted with rcgen,
//! serving a small and a 1 MiB response) run in this process. The gateway runs as the bundle
//! runs it, `krbottle bundle gateway` in its own process, with one allowed host and one route,
//! both names pinned to 127.0.0.1 (no DNS). mitmproxy (`mitmdump`) is likewise a child process,
//! with an addon doing what a route does: drop the client's credentials, inject the token,
//! scrub the token's forms from responses; it verifies the upstream against the same test CA.
//!
//! - Splice latency: sequential GETs of the small response through a spliced CONNECT and
//!   directly, interleaved, (a) one new connection per request (TCP, CONNECT, TLS handshake,
//!   request: per-connection setup), (b) one kept-alive tunnel (the relay's per-request cost).
//!   Added latency is the gateway's percentile minus the direct one.
//! - Route throughput: [`CONCURRENCY`] kept-alive connections share the requests; requests/s
//!   from the small response, MB/s from the large one. The upstream checks every routed request
//!   carries the injected token, so a contender that does not intercept cannot post a number.
//!
//! Both proxies compete for the same cores with the client and the upstream; on a small
//! machine the direct row is the ceiling of what this client can measure. Nothing is invented
//! when mitmdump is missing: the report says so and leaves its numbers out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{ms, percentile};
use crate::bundle::ca::BottleCa;
use crate::bundle::gateway::config::{GatewayConfig, Limits};
use crate::cli::BenchGatewayArgs;
use crate::commands::bundle::GATEWAY_LISTENING;
use crate::env_vars;
use crate::exit;
use crate::manifest::Route;
use crate::output::{Reporter, print_json};

/// The allowed (spliced) host and the route (intercepted) host, both pinned to 127.0.0.1.
const SPLICE_HOST: &str = "upstream.bench.test";
const ROUTE_HOST: &str = "route.bench.test";
/// The environment variable the route's token is read from (the gateway's closure, mitmdump's
/// real environment: a token never goes on a command line).
const TOKEN_ENV: &str = "KRBOTTLE_BENCH_ROUTE_TOKEN";
/// A made-up token: the bench talks to nothing real.
const TOKEN: &str = "bench-route-token-0123456789abcdef";
/// What the client sends as its own credential on a route; the proxy must drop it.
const CLIENT_CREDENTIAL: &str = "Bearer client-placeholder-credential";
/// Response header the upstream sets when the request carried the injected token.
const INJECTED_HEADER: &str = "x-bench-token";
const SMALL_PATH: &str = "/small";
const SMALL_BYTES: usize = 1024;
const LARGE_PATH: &str = "/large";
const LARGE_BYTES: usize = 1 << 20;
/// Kept-alive connections sharing the throughput requests.
const CONCURRENCY: u32 = 8;
/// Longest any connection setup or request may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest mitmdump may take to start listening.
const MITMDUMP_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Targets the numbers are judged against.
const TARGET_ADDED_P50_MS: f64 = 0.5;
const TARGET_RATIO_VS_MITMPROXY: f64 = 5.0;

/// mitmproxy's side of the route: the same header swap and scrubbing as a gateway route.
const MITM_ADDON: &str = r#"
import base64, os
TOKEN = os.environ["KRBOTTLE_BENCH_ROUTE_TOKEN"].encode()
FORMS = [TOKEN, base64.b64encode(TOKEN), base64.urlsafe_b64encode(TOKEN).rstrip(b"="),
         TOKEN.hex().encode(), TOKEN.hex().upper().encode()]
CREDENTIALS = ("authorization", "proxy-authorization", "x-api-key", "cookie")

def scrub(data):
    for form in FORMS:
        if form in data:
            data = data.replace(form, b"[scrubbed]")
    return data

def request(flow):
    for name in CREDENTIALS:
        if name in flow.request.headers:
            del flow.request.headers[name]
    flow.request.headers["authorization"] = "Bearer " + TOKEN.decode()

def response(flow):
    body = flow.response.raw_content or b""
    clean = scrub(body)
    if clean != body:
        flow.response.raw_content = clean
    for name in set(flow.response.headers.keys()):
        values = flow.response.headers.get_all(name)
        clean = [scrub(v.encode()).decode() for v in values]
        if clean != values:
            flow.response.headers.set_all(name, clean)
"#;

#[derive(Debug, Serialize)]
struct Latency {
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    gateway_p50_ms: f64,
    gateway_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    requests_per_s: f64,
    mb_per_s: f64,
}

#[derive(Debug, Serialize)]
struct GatewayReport {
    requests: u32,
    large_requests: u32,
    large_bytes: usize,
    small_bytes: usize,
    concurrency: u32,
    /// One new TCP connection, CONNECT and TLS handshake per request.
    splice_new_connection: Latency,
    /// One kept-alive tunnel for all requests.
    splice_kept_alive: Latency,
    target_added_p50_ms: f64,
    route_direct: Throughput,
    route_gateway: Throughput,
    /// Absent when mitmdump could not be found (see `mitmproxy_missing`).
    route_mitmproxy: Option<Throughput>,
    mitmproxy_version: Option<String>,
    mitmproxy_missing: Option<String>,
    /// gateway ÷ mitmproxy (target ≥ 5); absent without mitmproxy.
    ratio_requests_per_s_vs_mitmproxy: Option<f64>,
    ratio_mb_per_s_vs_mitmproxy: Option<f64>,
    target_ratio_vs_mitmproxy: f64,
}

pub(super) fn run(args: BenchGatewayArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("Could not start the async runtime")?;
    let report = runtime.block_on(bench(&args, reporter))?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(exit::OK)
}

async fn bench(args: &BenchGatewayArgs, reporter: &Reporter) -> anyhow::Result<GatewayReport> {
    let dir = tempfile::Builder::new()
        .prefix("krbottle-bench-gateway-")
        .tempdir()
        .context("Could not create a scratch dir in the temp dir")?;
    reporter.status("starting the upstream and the gateway");
    let pki = UpstreamPki::mint()?;
    let upstream_ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca_file, &pki.ca_pem)?;
    let upstream = spawn_upstream(pki.server_config()?).await?;
    let bottle_ca = BottleCa::generate("bench")?;
    let gateway_process = start_gateway(dir.path(), &bottle_ca, &upstream_ca_file)?;
    let gateway = gateway_process.addr;

    let direct_tls = client_tls(&[&pki.ca_pem])?;
    let bottle_tls = client_tls(&[&pki.ca_pem, bottle_ca.cert_pem()])?;
    let port = upstream.port();
    let via_gateway = |host: &str, tls: &Arc<rustls::ClientConfig>, route: bool| Dial {
        proxy: Some(gateway),
        connect_to: host_port(host, port),
        sni: host.to_owned(),
        tls: tls.clone(),
        route,
    };
    let n = args.requests;
    let large = (n / 20).max(8);

    reporter.status(format!(
        "splice latency, new connections ({n} requests each)"
    ));
    let splice_new_connection = latency_new_connections(
        &[
            direct_ip(port, SPLICE_HOST, &direct_tls),
            via_gateway(SPLICE_HOST, &bottle_tls, false),
        ],
        n,
    )
    .await?;
    reporter.status(format!(
        "splice latency, kept-alive tunnel ({n} requests each)"
    ));
    let splice_kept_alive = latency_kept_alive(
        &[
            direct_ip(port, SPLICE_HOST, &direct_tls),
            via_gateway(SPLICE_HOST, &bottle_tls, false),
        ],
        n,
    )
    .await?;

    reporter.status("route throughput: direct");
    let route_direct = throughput(&direct_ip(port, ROUTE_HOST, &direct_tls), n, large).await?;
    reporter.status("route throughput: gateway");
    let route_gateway = throughput(&via_gateway(ROUTE_HOST, &bottle_tls, true), n, large).await?;

    let (route_mitmproxy, mitmproxy_version, mitmproxy_missing) = match find_mitmdump() {
        Err(why) => {
            reporter.status(format!("mitmproxy left out: {why}"));
            (None, None, Some(why))
        }
        Ok(mitmdump) => {
            reporter.status(format!("route throughput: {}", mitmdump.display()));
            let version = mitmdump_version(&mitmdump);
            let mitm = Mitmdump::start(&mitmdump, dir.path(), &upstream_ca_file).await?;
            let tls = client_tls(&[&pki.ca_pem, &mitm.ca_pem])?;
            // mitmproxy resolves CONNECT names itself, so it is sent the address; the client's
            // SNI and Host still name the route host, which mitmproxy passes upstream.
            let dial = Dial {
                proxy: Some(mitm.proxy.addr),
                connect_to: upstream.to_string(),
                sni: ROUTE_HOST.to_owned(),
                tls,
                route: true,
            };
            let t = throughput(&dial, n, large).await?;
            drop(mitm);
            (Some(t), version, None)
        }
    };
    let ratio =
        |f: fn(&Throughput) -> f64| route_mitmproxy.as_ref().map(|m| f(&route_gateway) / f(m));
    Ok(GatewayReport {
        requests: n,
        large_requests: large,
        large_bytes: LARGE_BYTES,
        small_bytes: SMALL_BYTES,
        concurrency: CONCURRENCY,
        splice_new_connection,
        splice_kept_alive,
        target_added_p50_ms: TARGET_ADDED_P50_MS,
        ratio_requests_per_s_vs_mitmproxy: ratio(|t| t.requests_per_s),
        ratio_mb_per_s_vs_mitmproxy: ratio(|t| t.mb_per_s),
        route_direct,
        route_gateway,
        route_mitmproxy,
        mitmproxy_version,
        mitmproxy_missing,
        target_ratio_vs_mitmproxy: TARGET_RATIO_VS_MITMPROXY,
    })
}

fn host_port(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// A direct connection to the upstream's address, with `host` as SNI and Host.
fn direct_ip(port: u16, host: &str, tls: &Arc<rustls::ClientConfig>) -> Dial {
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
struct Dial {
    proxy: Option<SocketAddr>,
    /// `host:port` to dial (direct) or to name in the CONNECT (proxy).
    connect_to: String,
    /// TLS server name, also the request's Host.
    sni: String,
    tls: Arc<rustls::ClientConfig>,
    /// A route: send a client credential and require the upstream to have seen the token.
    route: bool,
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
            let body = resp.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK {
                bail!(
                    "GET {path} via {} answered {status}: {}",
                    self.connect_to,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            if self.route && !injected {
                bail!(
                    "The proxy at {:?} did not inject the route token: it is not intercepting",
                    self.proxy
                );
            }
            Ok(body.len())
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
async fn latency_new_connections(dials: &[Dial; 2], n: u32) -> anyhow::Result<Latency> {
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
async fn latency_kept_alive(dials: &[Dial; 2], n: u32) -> anyhow::Result<Latency> {
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

/// requests/s over `small` GETs of the small response and MB/s over `large` GETs of the large
/// one, each spread over [`CONCURRENCY`] kept-alive connections (set up inside the timing).
async fn throughput(dial: &Dial, small: u32, large: u32) -> anyhow::Result<Throughput> {
    let (small_time, _) = spread(dial, SMALL_PATH, small).await?;
    let (large_time, bytes) = spread(dial, LARGE_PATH, large).await?;
    Ok(Throughput {
        requests_per_s: f64::from(small) / small_time.as_secs_f64(),
        mb_per_s: bytes as f64 / large_time.as_secs_f64() / 1e6,
    })
}

/// Runs `count` GETs of `path` over up to [`CONCURRENCY`] connections; returns the wall time
/// and the body bytes received.
async fn spread(dial: &Dial, path: &'static str, count: u32) -> anyhow::Result<(Duration, u64)> {
    let left = Arc::new(AtomicU32::new(count));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY.min(count) {
        let (dial, left) = (dial.clone(), left.clone());
        workers.spawn(async move {
            let mut sender = dial.connect().await?;
            let mut bytes = 0u64;
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                bytes += dial.get(&mut sender, path).await? as u64;
            }
            anyhow::Ok(bytes)
        });
    }
    let mut total = 0;
    while let Some(done) = workers.join_next().await {
        total += done.context("A client task panicked")??;
    }
    Ok((started.elapsed(), total))
}

fn client_tls(ca_pems: &[&str]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
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

/// The upstream's test CA and its leaf for both bench names and 127.0.0.1.
struct UpstreamPki {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl UpstreamPki {
    fn mint() -> anyhow::Result<UpstreamPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "krbottle bench upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params =
            CertificateParams::new(vec![SPLICE_HOST.to_owned(), ROUTE_HOST.to_owned()])?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(UpstreamPki {
            ca_pem: ca_cert.pem(),
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        })
    }

    fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(self.leaf_key.clone().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], key)?;
        // HTTP/1.1 only, so the gateway and mitmproxy speak the same protocol upstream.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The HTTPS upstream on 127.0.0.1; serves until the runtime ends.
async fn spawn_upstream(tls: Arc<rustls::ServerConfig>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let small = Bytes::from(vec![b's'; SMALL_BYTES]);
    let large = Bytes::from(vec![b'L'; LARGE_BYTES]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, small, large) = (acceptor.clone(), small.clone(), large.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let (small, large) = (small.clone(), large.clone());
                    async move { Ok::<_, Infallible>(upstream_answer(&req, small, large)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The small or large body; marks a request that carried the route's token, and refuses one
/// that still carries a client credential (the proxy let it through).
fn upstream_answer<B>(req: &Request<B>, small: Bytes, large: Bytes) -> Response<Full<Bytes>> {
    let auth = req.headers().get(http::header::AUTHORIZATION);
    let injected = auth.is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    let mut resp = Response::builder();
    if auth.is_some() && !injected {
        return resp
            .status(StatusCode::UNAUTHORIZED)
            .body(Full::new(Bytes::from_static(
                b"client credential leaked upstream",
            )))
            .unwrap_or_default();
    }
    if injected {
        resp = resp.header(INJECTED_HEADER, "1");
    }
    let body = match req.uri().path() {
        SMALL_PATH => small,
        LARGE_PATH => large,
        _ => {
            return resp
                .status(StatusCode::NOT_FOUND)
                .body(Full::default())
                .unwrap_or_default();
        }
    };
    resp.body(Full::new(body)).unwrap_or_default()
}

/// The gateway daemon (`krbottle bundle gateway`, as the bundle runs it) on 127.0.0.1, with one
/// allowed host and one route, both pinned to 127.0.0.1. Its own process, like mitmproxy's, so
/// neither shares a runtime with the client and the upstream.
fn start_gateway(
    dir: &Path,
    bottle_ca: &BottleCa,
    upstream_ca_file: &Path,
) -> anyhow::Result<ProxyProcess> {
    let (ca_cert, ca_key) = (dir.join("bottle-ca.pem"), dir.join("bottle-ca.key"));
    bottle_ca.write(&ca_cert, &ca_key)?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let config = GatewayConfig {
        bottle: "bench".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        allow: vec![SPLICE_HOST.into()],
        routes: vec![Route {
            host: ROUTE_HOST.into(),
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            token_env: TOKEN_ENV.into(),
        }],
        ca_cert: Some(ca_cert),
        ca_key: Some(ca_key),
        upstream_ca_file: Some(upstream_ca_file.to_path_buf()),
        pinned: BTreeMap::from([
            (SPLICE_HOST.to_owned(), localhost),
            (ROUTE_HOST.to_owned(), localhost),
        ]),
        internal_hosts: Vec::new(),
        limits: Limits::default(),
    };
    let config_path = dir.join("gateway.json");
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let exe = std::env::current_exe().context("Could not find krbottle's own binary")?;
    // Decision lines are written as in the bundle (to a pipe there), here to /dev/null.
    let mut child = Command::new(exe)
        .args(["bundle", "gateway", "--config"])
        .arg(&config_path)
        .env(TOKEN_ENV, TOKEN)
        .env_remove(env_vars::KRBOTTLE_LOG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("Could not start krbottle bundle gateway")?;
    let stderr = child.stderr.take().context("the gateway's stderr")?;
    let mut proxy = ProxyProcess {
        child,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    };
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix(GATEWAY_LISTENING) {
            proxy.addr = addr
                .trim()
                .parse()
                .with_context(|| format!("The gateway printed a bad address: {line}"))?;
            break;
        }
        said.push(line);
    }
    if proxy.addr.port() == 0 {
        bail!("The gateway did not start: {}", said.join("\n"));
    }
    // Keep draining, so a chatty gateway never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(proxy)
}

/// `mitmdump` from `KRBOTTLE_MITMDUMP` or `PATH`, or why there is none.
fn find_mitmdump() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_vars::KRBOTTLE_MITMDUMP) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{}={} is not a file",
                env_vars::KRBOTTLE_MITMDUMP,
                path.display()
            ))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("mitmdump"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "mitmdump is not on PATH; install mitmproxy (apt-get install mitmproxy) or set {}",
                env_vars::KRBOTTLE_MITMDUMP
            )
        })
}

fn mitmdump_version(mitmdump: &Path) -> Option<String> {
    let out = Command::new(mitmdump).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().map(|l| l.trim().to_owned())
}

/// A proxy in its own process (the gateway daemon or mitmdump), killed on drop.
struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mitmdump.
struct Mitmdump {
    proxy: ProxyProcess,
    /// The CA mitmproxy signs its interception certificates with.
    ca_pem: String,
}

impl Mitmdump {
    async fn start(mitmdump: &Path, dir: &Path, upstream_ca: &Path) -> anyhow::Result<Mitmdump> {
        let addon = dir.join("route_addon.py");
        std::fs::write(&addon, MITM_ADDON)?;
        let confdir = dir.join("mitmproxy");
        let log_path = dir.join("mitmdump.log");
        let log = std::fs::File::create(&log_path)?;
        // A free port: bind, read, release (mitmdump cannot report the port it was given).
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let child = Command::new(mitmdump)
            .args(["--quiet", "--listen-host", "127.0.0.1", "--listen-port"])
            .arg(port.to_string())
            .arg("--set")
            .arg(format!("confdir={}", confdir.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream_ca.display()
            ))
            .arg("-s")
            .arg(&addon)
            .env(TOKEN_ENV, TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("Could not start {}", mitmdump.display()))?;
        let mut proxy = ProxyProcess { child, addr };
        let started = Instant::now();
        loop {
            if let Some(status) = proxy.child.try_wait()? {
                bail!(
                    "mitmdump exited during startup ({status}): {}",
                    read_tail(&log_path)
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if started.elapsed() > MITMDUMP_START_TIMEOUT {
                bail!(
                    "mitmdump did not listen on {addr} within {MITMDUMP_START_TIMEOUT:?}: {}",
                    read_tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ca_file = confdir.join("mitmproxy-ca-cert.pem");
        let ca_pem = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("mitmdump wrote no CA at {}", ca_file.display()))?;
        Ok(Mitmdump { proxy, ca_pem })
    }
}

fn read_tail(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn print_report(r: &GatewayReport) {
    println!(
        "bench gateway (127.0.0.1 only; HTTP/1.1 over TLS; {} requests per contender, {} of 1 MiB for MB/s)",
        r.requests, r.large_requests
    );
    println!(
        "  spliced CONNECT, GET of {} bytes, added = gateway percentile - direct percentile:",
        r.small_bytes
    );
    for (name, l) in [
        ("new connection per request", &r.splice_new_connection),
        ("one kept-alive tunnel", &r.splice_kept_alive),
    ] {
        println!(
            "    {name:<27} direct p50 {:>7.3} ms p99 {:>7.3} ms | gateway p50 {:>7.3} ms p99 {:>7.3} ms | added p50 {:>+7.3} ms p99 {:>+7.3} ms",
            l.direct_p50_ms,
            l.direct_p99_ms,
            l.gateway_p50_ms,
            l.gateway_p99_ms,
            l.added_p50_ms,
            l.added_p99_ms
        );
    }
    println!(
        "    target: added p50 <= {} ms for a new connection",
        r.target_added_p50_ms
    );
    println!(
        "  intercepted route (client credential dropped, token injected, responses scrubbed), {} kept-alive connections:",
        r.concurrency
    );
    let row = |name: &str, t: &Throughput| {
        println!(
            "    {name:<38} {:>9.0} requests/s {:>9.1} MB/s",
            t.requests_per_s, t.mb_per_s
        );
    };
    row("direct (no proxy, no interception)", &r.route_direct);
    row("krbottle gateway route", &r.route_gateway);
    match (&r.route_mitmproxy, &r.mitmproxy_missing) {
        (Some(m), _) => {
            let name = format!(
                "mitmproxy ({})",
                r.mitmproxy_version.as_deref().unwrap_or("mitmdump")
            );
            row(&name, m);
            println!(
                "    gateway / mitmproxy: {:.1}x requests/s, {:.1}x MB/s (target >= {})",
                r.ratio_requests_per_s_vs_mitmproxy.unwrap_or_default(),
                r.ratio_mb_per_s_vs_mitmproxy.unwrap_or_default(),
                r.target_ratio_vs_mitmproxy
            );
        }
        (None, why) => println!(
            "    mitmproxy: not measured ({}); no ratio against it",
            why.as_deref().unwrap_or("unknown")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream is what keeps a peer that does not intercept from posting a number.
    #[test]
    fn upstream_marks_the_token_and_refuses_a_leaked_client_credential() {
        let token = format!("Bearer {TOKEN}");
        let table: &[(Option<&str>, &str, StatusCode, bool, usize)] = &[
            (None, SMALL_PATH, StatusCode::OK, false, SMALL_BYTES),
            (None, LARGE_PATH, StatusCode::OK, false, LARGE_BYTES),
            (Some(&token), SMALL_PATH, StatusCode::OK, true, SMALL_BYTES),
            (
                Some(CLIENT_CREDENTIAL),
                SMALL_PATH,
                StatusCode::UNAUTHORIZED,
                false,
                33,
            ),
            (
                Some("Bearer other"),
                LARGE_PATH,
                StatusCode::UNAUTHORIZED,
                false,
                33,
            ),
            (None, "/other", StatusCode::NOT_FOUND, false, 0),
        ];
        let small = Bytes::from(vec![b's'; SMALL_BYTES]);
        let large = Bytes::from(vec![b'L'; LARGE_BYTES]);
        for &(auth, path, status, injected, len) in table {
            let mut req = Request::get(path);
            if let Some(auth) = auth {
                req = req.header(http::header::AUTHORIZATION, auth);
            }
            let resp = upstream_answer(&req.body(()).unwrap(), small.clone(), large.clone());
            assert_eq!(resp.status(), status, "{auth:?} {path}");
            assert_eq!(
                resp.headers().contains_key(INJECTED_HEADER),
                injected,
                "{auth:?} {path}"
            );
            let body = futures_util::FutureExt::now_or_never(resp.into_body().collect())
                .expect("a full body is ready")
                .unwrap()
                .to_bytes();
            assert_eq!(body.len(), len, "{auth:?} {path}");
        }
    }
}
