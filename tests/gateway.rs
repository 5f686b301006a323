//! The gateway with real components: `curl` as the client, an in-test HTTPS upstream with its
//! own CA, the gateway in-process with a resolver that counts lookups. Upstream names are
//! pinned to 127.0.0.1 in the gateway config (the only reachable addresses on a test machine).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use krbottle::ca::BottleCa;
use krbottle::daemon::gateway::Gateway;
use krbottle::daemon::gateway::config::{GatewayConfig, Limits};
use krbottle::daemon::gateway::log::DecisionLog;
use krbottle::daemon::gateway::resolve::{Lookup, Resolver};
use krbottle::manifest::Route;
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN_A: &str = "sk-route-a-0123456789abcdefXYZ";
const TOKEN_B: &str = "tok_route_b_9876543210zyx";
const CLIENT_FAKE: &str = "client-fake-credential-1234";

/// Answers every lookup with 127.0.0.1 and counts the lookups.
#[derive(Default)]
struct CountingResolver(AtomicUsize);

impl Resolver for CountingResolver {
    fn lookup<'a>(&'a self, _host: &'a str, port: u16) -> Lookup<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(vec![SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)]) })
    }
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// What the upstream saw: one (headers as text, body) per request.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct World {
    _dir: tempfile::TempDir,
    /// Trust store for curl: the upstream's test CA and the bottle CA.
    cafile: PathBuf,
    gateway: SocketAddr,
    upstream_port: u16,
    plain_port: u16,
    resolver: Arc<CountingResolver>,
    log: SharedBuf,
    seen: Seen,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn every_encoding(token: &str) -> Vec<String> {
    let b = token.as_bytes();
    vec![
        token.to_string(),
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        hex::encode(b),
        hex::encode_upper(b),
    ]
}

fn assert_no_token(what: &str, text: &str) {
    for token in [TOKEN_A, TOKEN_B] {
        for form in every_encoding(token) {
            assert!(
                !text.contains(&form),
                "{what} contains a form of a token: {text}"
            );
        }
    }
}

async fn echo(seen: Seen, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    let mut headers = String::new();
    for (k, v) in &parts.headers {
        headers.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    seen.lock().unwrap().push((headers.clone(), body.clone()));
    if parts.uri.path() == "/leak" {
        // A hostile or careless upstream sending the token back in every form.
        let mut out = String::new();
        for form in every_encoding(TOKEN_A) {
            out.push_str(&format!("leak: {form}\n"));
        }
        out.push_str(&format!("in json: {{\"key\":\"{TOKEN_A}\"}}\n"));
        return Response::builder()
            .header("x-leak", TOKEN_A)
            .header("set-cookie", format!("session={TOKEN_A}"))
            .body(Full::new(Bytes::from(out)))
            .unwrap();
    }
    if parts.uri.path() == "/encoded" {
        // Ignores accept-encoding: identity; the bytes could hide the token from a scrubber.
        return Response::builder()
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(gzip(TOKEN_A.as_bytes()))))
            .unwrap();
    }
    if let Some(target) = parts.uri.query().and_then(|q| q.strip_prefix("redirect=")) {
        return Response::builder()
            .status(302)
            .header("location", target)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let mut out = format!("{} {}\n{headers}\n", parts.method, parts.uri).into_bytes();
    out.extend(body);
    Response::new(Full::new(Bytes::from(out)))
}

/// An HTTPS upstream (HTTP/2 or HTTP/1.1 by ALPN) for `names`, with its own CA.
async fn spawn_upstream(seen: Seen, h1_only: bool) -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names = ["upstream.test", "route.test", "route2.test", "other.test"];
    let mut leaf_params = CertificateParams::new(names.map(String::from).to_vec()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream.test");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    config.alpn_protocols = if h1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(echo(seen, req).await) }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (port, ca_cert.pem())
}

async fn spawn_plain_upstream(seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(echo(seen, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

async fn world() -> World {
    world_with(false, Limits::default()).await
}

async fn world_with(h1_only: bool, limits: Limits) -> World {
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let (upstream_port, upstream_ca) = spawn_upstream(seen.clone(), h1_only).await;
    let plain_port = spawn_plain_upstream(seen.clone()).await;
    let upstream_ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca_file, &upstream_ca).unwrap();
    let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let ca = BottleCa::generate("test").unwrap();
    ca.write(&ca_cert, &ca_key).unwrap();
    let cafile = dir.path().join("curl-ca.pem");
    std::fs::write(&cafile, format!("{upstream_ca}{}", ca.cert_pem())).unwrap();

    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pinned: BTreeMap<String, IpAddr> = [
        "upstream.test",
        "route.test",
        "route2.test",
        "other.test",
        "plain.test",
    ]
    .into_iter()
    .map(|n| (n.to_string(), localhost))
    .collect();
    let config = GatewayConfig {
        bottle: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        allow: vec![
            "upstream.test".into(),
            "other.test".into(),
            "plain.test".into(),
            "unpinned.example".into(),
        ],
        routes: vec![
            Route {
                host: "route.test".into(),
                header: "authorization".into(),
                scheme: Some("Bearer".into()),
                token_env: "TOKEN_A".into(),
            },
            Route {
                host: "route2.test".into(),
                header: "x-api-key".into(),
                scheme: None,
                token_env: "TOKEN_B".into(),
            },
        ],
        ca_cert: Some(ca_cert),
        ca_key: Some(ca_key),
        upstream_ca_file: Some(upstream_ca_file),
        pinned,
        internal_hosts: Vec::new(),
        limits,
    };
    let env = |name: &str| match name {
        "TOKEN_A" => Some(TOKEN_A.to_string()),
        "TOKEN_B" => Some(TOKEN_B.to_string()),
        _ => None,
    };
    let resolver = Arc::new(CountingResolver::default());
    let log = SharedBuf::default();
    let gateway = Gateway::new(
        &config,
        env,
        resolver.clone(),
        DecisionLog::new("test", Box::new(log.clone())),
    )
    .unwrap();
    let listener = gateway.bind().await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.serve(listener));
    World {
        _dir: dir,
        cafile,
        gateway: addr,
        upstream_port,
        plain_port,
        resolver,
        log,
        seen,
    }
}

struct CurlResult {
    status: u16,
    body: String,
    stderr: String,
}

impl World {
    async fn curl(&self, url: &str, extra: &[&str]) -> CurlResult {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg("--proxy")
            .arg(format!("http://{}", self.gateway))
            .arg("--cacert")
            .arg(&self.cafile)
            .args(extra)
            .arg(url)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .output()
            .await
            .expect("curl must be installed for the gateway tests");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        CurlResult {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Sends a raw CONNECT and returns the status code and the response text.
    async fn raw_connect(&self, authority: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.gateway).await.unwrap();
        s.write_all(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        // Read until the head (and a short body) arrived or the gateway closed.
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if n == 0
                || text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n")
                || text.ends_with('\n') && text.contains("krbottle gateway:")
            {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// The first log line matching `pred`, waiting for it to be written (up to 10 s).
    async fn wait_for_line(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..500 {
            if let Some(l) = self.log.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no matching log line in {:?}", self.log.lines());
    }

    fn lookups(&self) -> usize {
        self.resolver.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_host_is_spliced_and_logged() {
    let w = world().await;
    let r = w
        .curl(
            &format!("https://upstream.test:{}/hello", w.upstream_port),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(
        r.body.starts_with("GET ") && r.body.contains("/hello"),
        "{}",
        r.body
    );
    assert_eq!(w.lookups(), 0, "pinned names are not resolved");
    // The splice is logged when the tunnel closes, just after curl exits.
    let line = w
        .wait_for_line(|l| l["decision"] == "allow" && l["host"] == "upstream.test")
        .await;
    assert_eq!(line["bottle"], "test");
    assert_eq!(line["rule"], "upstream.test");
    assert_eq!(line["port"], w.upstream_port);
    assert!(line["bytes_up"].as_u64().unwrap() > 0 && line["bytes_down"].as_u64().unwrap() > 0);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_hosts_get_403_without_any_dns_lookup() {
    let w = world().await;
    let r = w.curl("https://evil.test/", &[]).await;
    assert!(
        r.stderr.contains("403"),
        "curl should report the 403: {}",
        r.stderr
    );
    let p = w.upstream_port;
    let cases: Vec<(String, u16, &str)> = vec![
        ("evil.test:443".into(), 403, "allowlist"),
        (format!("127.0.0.1:{p}"), 403, "IP address"),
        (format!("127.1:{p}"), 403, "IP address"),
        (format!("0x7f.0.0.1:{p}"), 403, "IP address"),
        (format!("2130706433:{p}"), 403, "IP address"),
        (format!("[::ffff:127.0.0.1]:{p}"), 403, "IP address"),
        (format!("[::1]:{p}"), 403, "IP address"),
        ("169.254.169.254:80".into(), 403, "IP address"),
        (format!("localhost:{p}"), 403, "localhost"),
        ("sub.upstream.test:443".into(), 403, "allowlist"),
        ("upstream.test.evil.test:443".into(), 403, "allowlist"),
        ("allowed.com@evil.test:443".into(), 400, ""),
        ("upstream.test".into(), 400, "port"),
        ("under_score.test:443".into(), 400, "domain"),
    ];
    for (authority, want, reason) in &cases {
        let (status, text) = w.raw_connect(authority).await;
        assert_eq!(status, *want, "CONNECT {authority}: {text}");
        assert!(text.contains(reason), "CONNECT {authority}: {text}");
    }
    assert_eq!(w.lookups(), 0, "a denied host must never be resolved");
    let denies = w
        .log
        .lines()
        .into_iter()
        .filter(|l| l["decision"] == "deny")
        .count();
    assert!(denies >= cases.len(), "every denial is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn canonical_forms_of_an_allowed_host_are_allowed() {
    let w = world().await;
    let p = w.upstream_port;
    for authority in [format!("UPSTREAM.test:{p}"), format!("upstream.test.:{p}")] {
        let (status, text) = w.raw_connect(&authority).await;
        assert_eq!(status, 200, "CONNECT {authority}: {text}");
    }
    let r = w.curl(&format!("https://Upstream.TEST.:{p}/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_resolving_to_private_addresses_are_refused() {
    let w = world().await;
    let (status, text) = w.raw_connect("unpinned.example:443").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("non-public"), "{text}");
    assert_eq!(w.lookups(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_that_differs_from_the_connect_host_is_refused() {
    let w = world().await;
    // curl connects to other.test (allowed) but asks the TLS server for upstream.test.
    let r = w
        .curl(
            &format!("https://upstream.test:{}/", w.upstream_port),
            &[
                "--connect-to",
                &format!("upstream.test:{0}:other.test:{0}", w.upstream_port),
            ],
        )
        .await;
    assert_ne!(r.status, 200, "fronting must fail: {}", r.body);
    w.wait_for_line(|l| {
        l["host"] == "other.test"
            && l["decision"] == "deny"
            && l["reason"].as_str().unwrap().contains("SNI")
    })
    .await;
    // Nothing reached the upstream.
    assert!(w.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn route_injects_the_token_and_drops_client_credentials() {
    let w = world().await;
    let url = format!("https://route.test:{}/v1/messages", w.upstream_port);
    let r = w
        .curl(
            &url,
            &[
                "-H",
                &format!("Authorization: Bearer {CLIENT_FAKE}"),
                "-H",
                &format!("x-api-key: {CLIENT_FAKE}"),
                "-H",
                &format!("Cookie: s={CLIENT_FAKE}"),
                "--data",
                "hello=world",
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    let seen = w.seen.lock().unwrap().clone();
    let (headers, body) = seen.last().expect("the upstream got the request");
    assert!(
        headers.contains(&format!("authorization: Bearer {TOKEN_A}\n")),
        "{headers}"
    );
    assert!(
        !headers.contains(CLIENT_FAKE),
        "client credentials reached the upstream: {headers}"
    );
    assert!(!headers.contains("cookie"), "{headers}");
    assert_eq!(body, b"hello=world");
    // The upstream echoed the token back; the client sees it redacted.
    assert!(
        r.body.contains("authorization: Bearer [REDACTED]"),
        "{}",
        r.body
    );
    assert_no_token("the client's response", &r.body);
    assert_no_token("the decision log", &w.log.text());
    w.wait_for_line(|l| {
        l["decision"] == "route" && l["host"] == "route.test" && l["status"] == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn route_with_custom_header_and_http1() {
    let w = world().await;
    let url = format!("https://route2.test:{}/", w.upstream_port);
    let r = w
        .curl(
            &url,
            &["--http1.1", "-H", &format!("x-api-key: {CLIENT_FAKE}")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    let seen = w.seen.lock().unwrap().clone();
    let (headers, _) = seen.last().unwrap();
    assert!(
        headers.contains(&format!("x-api-key: {TOKEN_B}\n")),
        "{headers}"
    );
    assert!(!headers.contains(CLIENT_FAKE), "{headers}");
    assert_no_token("the client's response", &r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn echoed_token_is_scrubbed_from_headers_and_body() {
    let w = world().await;
    let url = format!("https://route.test:{}/leak", w.upstream_port);
    let r = w.curl(&url, &["-i"]).await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_no_token("the client's response", &r.body);
    assert!(r.body.contains("x-leak: [REDACTED]"), "{}", r.body);
    assert_eq!(r.body.matches("[REDACTED]").count(), 8, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_sent_to_other_hosts_are_blocked() {
    let w = world().await;
    let plain = format!("http://plain.test:{}/", w.plain_port);
    let b64 = base64::engine::general_purpose::STANDARD.encode(TOKEN_A);
    let hex_b = hex::encode(TOKEN_B);
    let pct = TOKEN_A.replace('-', "%2D");
    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("{plain}?k={TOKEN_A}"), vec![]),
        (format!("{plain}?k={pct}"), vec![]),
        (plain.clone(), vec!["--data".into(), format!("blob={b64}")]),
        (
            plain.clone(),
            vec!["-H".into(), format!("x-debug: {hex_b}")],
        ),
        // Route B's token inside route A's tunnel is another host's secret.
        (
            format!("https://route.test:{}/", w.upstream_port),
            vec!["--data".into(), TOKEN_B.into()],
        ),
    ];
    for (url, extra) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = w.curl(url, &extra).await;
        assert_eq!(r.status, 403, "{url} {extra:?}: {}", r.body);
        assert!(r.body.contains("bundle secret TOKEN_"), "{}", r.body);
    }
    assert!(
        w.seen.lock().unwrap().is_empty(),
        "no blocked request reached an upstream"
    );
    // A clean request to the same host passes, so the blocks above were about the secret.
    let r = w.curl(&format!("{plain}?k=harmless"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let blocks = w
        .log
        .lines()
        .into_iter()
        .filter(|l| l["decision"] == "block")
        .count();
    assert_eq!(blocks, cases.len());
    assert_no_token("the decision log", &w.log.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn route_hosts_are_never_reached_over_plain_http() {
    let w = world().await;
    let r = w
        .curl(&format!("http://route.test:{}/", w.plain_port), &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(w.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn route_over_an_http1_only_upstream() {
    let w = world_with(true, Limits::default()).await;
    let url = format!("https://route.test:{}/leak", w.upstream_port);
    let r = w
        .curl(
            &url,
            &["-H", &format!("Authorization: Bearer {CLIENT_FAKE}")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_no_token("the client's response", &r.body);
    let seen = w.seen.lock().unwrap().clone();
    let (headers, _) = seen.last().unwrap();
    assert!(
        headers.contains(&format!("authorization: Bearer {TOKEN_A}\n")),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("host: route.test:{}\n", w.upstream_port)),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_are_refused() {
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let w = world_with(false, limits).await;
    let big = "a".repeat(64 * 1024);
    let mut s = TcpStream::connect(w.gateway).await.unwrap();
    let req = format!("CONNECT upstream.test:443 HTTP/1.1\r\nX-Big: {big}\r\n\r\n");
    // The gateway may close while we still write; only its answer matters.
    let _ = s.write_all(req.as_bytes()).await;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_in_what_a_client_sends_never_reach_the_log() {
    let w = world().await;
    // A valid name made of the token's hex is denied (403) and logged with that name...
    let host = format!("{}.evil.test:443", hex::encode(TOKEN_A));
    let (status, _) = w.raw_connect(&host).await;
    assert_eq!(status, 403);
    // ...an unparsable authority (400) is logged as the client sent it.
    let (status, _) = w.raw_connect(&format!("{TOKEN_B}@evil.test:443")).await;
    assert_eq!(status, 400);
    let text = w.log.text();
    assert!(text.contains("[REDACTED].evil.test"), "{text}");
    assert_no_token("the decision log", &text);
}

/// A route's upstream redirecting to another host: the client follows with a new CONNECT,
/// which is not the route, so the token does not follow.
#[tokio::test(flavor = "multi_thread")]
async fn token_does_not_follow_a_redirect_to_another_host() {
    let w = world().await;
    let p = w.upstream_port;
    let url = format!("https://route.test:{p}/start?redirect=https://other.test:{p}/landed");
    let r = w.curl(&url, &["-L"]).await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.body.contains("/landed"), "{}", r.body);
    let seen = w.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].0.contains(TOKEN_A),
        "the route request carries the token"
    );
    assert!(
        !seen[1].0.contains(TOKEN_A),
        "the redirected request must not: {}",
        seen[1].0
    );
    assert!(!seen[1].0.contains("authorization"), "{}", seen[1].0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_are_closed() {
    let limits = Limits {
        idle_timeout_secs: 1,
        ..Limits::default()
    };
    let w = world_with(false, limits).await;
    let mut s = TcpStream::connect(w.gateway).await.unwrap();
    let authority = format!("upstream.test:{}", w.upstream_port);
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    // The gateway answers 200, then closes the silent tunnel; the bound only stops a hang.
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the idle tunnel was not closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    w.wait_for_line(|l| l["decision"] == "deny" && l["reason"] == "client closed before TLS")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_wait_for_a_slot() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let w = world_with(false, limits).await;
    // The listen backlog is FIFO: the first connection takes the only slot.
    let first = TcpStream::connect(w.gateway).await.unwrap();
    let gateway = w.gateway;
    let second = tokio::spawn(async move {
        let mut s = TcpStream::connect(gateway).await.unwrap();
        s.write_all(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        while !second.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "the second connection was served while the first held the slot"
    );
    drop(first);
    let answer = second.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_bodies_are_scanned_or_refused() {
    let w = world().await;
    let plain = format!("http://plain.test:{}/", w.plain_port);
    let dir = tempfile::tempdir().unwrap();
    let secret_gz = dir.path().join("secret.gz");
    std::fs::write(&secret_gz, gzip(format!("key={TOKEN_B}").as_bytes())).unwrap();
    let clean_gz = dir.path().join("clean.gz");
    std::fs::write(&clean_gz, gzip(b"key=harmless")).unwrap();
    let upload = |path: &std::path::Path, encoding: &str| {
        vec![
            "--data-binary".to_string(),
            format!("@{}", path.display()),
            "-H".to_string(),
            format!("Content-Encoding: {encoding}"),
        ]
    };
    let cases = [
        (upload(&secret_gz, "gzip"), 403, "bundle secret TOKEN_B"),
        (upload(&clean_gz, "br"), 415, "content-encoding"),
        (upload(&clean_gz, "gzip"), 200, "POST /"),
    ];
    for (extra, status, needle) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = w.curl(&plain, &extra).await;
        assert_eq!(r.status, *status, "{extra:?}: {}", r.body);
        assert!(r.body.contains(needle), "{extra:?}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_route_responses_are_refused() {
    let w = world().await;
    let r = w
        .curl(
            &format!("https://route.test:{}/encoded", w.upstream_port),
            &[],
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("encoded body"), "{}", r.body);
}
