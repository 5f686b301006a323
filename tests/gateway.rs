//! The gateway with real components: `curl` as the client, an in-test HTTPS upstream with its
//! own CA (hyper, HTTP/2 or HTTP/1.1 by ALPN), a raw upstream that writes hostile responses
//! byte for byte, the gateway in-process with a resolver that counts lookups. Upstream names
//! are pinned to 127.0.0.1 in the gateway config (the only reachable addresses on a test
//! machine), and the rules name the test ports (`host:port`): rules are bound to ports.

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

/// What the upstream saw: one (request line and headers as text, body) per request.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

struct World {
    _dir: tempfile::TempDir,
    /// Trust store for curl: the upstream's test CA and the bottle CA.
    cafile: PathBuf,
    gateway: SocketAddr,
    upstream_port: u16,
    plain_port: u16,
    /// The raw upstream over TLS (route `raw.test`) and over plain HTTP (`rawplain.test`).
    raw_port: u16,
    raw_plain_port: u16,
    /// The route `down.test`'s port, where nothing listens.
    down_port: u16,
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
        assert!(
            !holds_token(text.as_bytes(), token),
            "{what} holds a token: {text}"
        );
    }
}

async fn echo(seen: Seen, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    let mut headers = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    for (k, v) in &parts.headers {
        headers.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    seen.lock().unwrap().push((headers.clone(), body.clone()));
    if let Some(form) = parts.uri.query().and_then(|q| q.strip_prefix("form=")) {
        let form: usize = form.parse().unwrap();
        let (_, text) = &response_forms(TOKEN_A)[form];
        return Response::new(Full::new(Bytes::from(text.clone())));
    }
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

/// The test upstreams' TLS: a CA of their own and one leaf for every test name, minted once
/// per test process so every upstream shares them.
fn upstream_tls(h1_only: bool) -> (tokio_rustls::TlsAcceptor, String) {
    type Pki = (Vec<u8>, Vec<u8>, String);
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    let (leaf, key, ca_pem) = PKI.get_or_init(mint_upstream_pki).clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.into()], key)
        .unwrap();
    config.alpn_protocols = if h1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_pem)
}

/// (leaf DER, leaf key PKCS#8 DER, CA PEM).
fn mint_upstream_pki() -> (Vec<u8>, Vec<u8>, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let names = [
        "upstream.test",
        "route.test",
        "route2.test",
        "other.test",
        "raw.test",
        "down.test",
        "a.wild.test",
    ];
    let mut leaf_params = CertificateParams::new(names.map(String::from).to_vec()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream.test");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (leaf.der().to_vec(), leaf_key.serialize_der(), ca_cert.pem())
}

/// An HTTPS upstream (HTTP/2 or HTTP/1.1 by ALPN), with its own CA.
async fn spawn_upstream(seen: Seen, h1_only: bool) -> (u16, String) {
    let (acceptor, ca_pem) = upstream_tls(h1_only);
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
    (port, ca_pem)
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
    let raw_port = spawn_raw_upstream(Some(upstream_tls(true).0)).await;
    let raw_plain_port = spawn_raw_upstream(None).await;
    let down_port = closed_port();
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
        "raw.test",
        "rawplain.test",
        "down.test",
    ]
    .into_iter()
    .map(|n| (n.to_string(), localhost))
    .collect();
    let config = GatewayConfig {
        bottle: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        allow: vec![
            format!("upstream.test:{upstream_port}"),
            format!("other.test:{upstream_port}"),
            format!("plain.test:{plain_port}"),
            format!("rawplain.test:{raw_plain_port}"),
            "unpinned.example".into(),
            "*.wild.test".into(),
        ],
        routes: vec![
            Route {
                host: format!("route.test:{upstream_port}"),
                header: "authorization".into(),
                scheme: Some("Bearer".into()),
                token_env: "TOKEN_A".into(),
                drop_headers: vec!["X-Custom-Account".into()],
            },
            Route {
                host: format!("route2.test:{upstream_port}"),
                header: "x-api-key".into(),
                scheme: None,
                token_env: "TOKEN_B".into(),
                drop_headers: Vec::new(),
            },
            Route {
                host: format!("raw.test:{raw_port}"),
                header: "authorization".into(),
                scheme: Some("Bearer".into()),
                token_env: "TOKEN_A".into(),
                drop_headers: Vec::new(),
            },
            // Nothing listens there: every request fails upstream.
            Route {
                host: format!("down.test:{down_port}"),
                header: "authorization".into(),
                scheme: Some("Bearer".into()),
                token_env: "TOKEN_A".into(),
                drop_headers: Vec::new(),
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
        raw_port,
        raw_plain_port,
        down_port,
        resolver,
        log,
        seen,
    }
}

/// A port with nothing listening on it (bound, read, released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(7) {
        out.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend(piece);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn with_length(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend(body);
    out
}

/// What the raw upstream answers on `path`: hostile responses, byte for byte. `None`: never
/// answer.
fn raw_answer(path: &str) -> Option<Vec<u8>> {
    let t = TOKEN_A;
    let leak = format!("leak {t} end").into_bytes();
    Some(match path {
        "/reason" => with_length(&format!("HTTP/1.1 200 OK {t}\r\n"), b"ok"),
        "/reason-hex" => with_length(&format!("HTTP/1.1 200 {}\r\n", hex::encode(t)), b"ok"),
        "/hints" => {
            let mut out = format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </{t}>; rel=preload\r\nx-hint: {t}\r\n\r\n"
            )
            .into_bytes();
            out.extend(with_length("HTTP/1.1 200 OK\r\n", b"ok"));
            out
        }
        "/name" => with_length(
            &format!("HTTP/1.1 200 OK\r\nx-{}: 1\r\n", hex::encode(t)),
            b"ok",
        ),
        "/switch" => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nx-t: {t}\r\n\r\n{t}"
        )
        .into_bytes(),
        "/te-gzip" => {
            let mut out =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
            out.extend(chunked(&gzip(&leak)));
            out
        }
        "/te-gzip-lines" => {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            out.extend(chunked(&gzip(&leak)));
            out
        }
        "/two-ce" => with_length(
            "HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\n",
            &gzip(&leak),
        ),
        "/stacked" => with_length(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n",
            &gzip(&gzip(&leak)),
        ),
        "/zstd-deflate" => with_length(
            "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Encoding: zstd\r\n",
            &zstd(&zlib(&leak)),
        ),
        "/ce-and-te" => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
            out.extend(chunked(&gzip(&zstd(&leak))));
            out
        }
        "/undeclared" => with_length("HTTP/1.1 200 OK\r\n", &gzip(&leak)),
        "/undeclared-zstd" => with_length("HTTP/1.1 200 OK\r\n", &zstd(&gzip(&leak))),
        "/undeclared-clean" => with_length("HTTP/1.1 200 OK\r\n", &gzip(b"a clean archive")),
        "/br" => with_length("HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n", b"\x0bbr"),
        "/te-br" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n".to_vec(),
        "/trailers" => {
            let mut out =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n"
                    .to_vec();
            out.extend(b"2\r\nok\r\n0\r\n");
            out.extend(format!("x-t: {t}\r\n\r\n").as_bytes());
            out
        }
        "/stall-head" => return None,
        _ => with_length("HTTP/1.1 404 Not Found\r\n", b""),
    })
}

/// A raw HTTP/1.1 upstream, over TLS when given an acceptor: one request per connection,
/// answered with [`raw_answer`] and closed.
async fn spawn_raw_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> u16 {
    async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let line = String::from_utf8_lossy(&got)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        match raw_answer(&path) {
            Some(answer) => {
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            }
            None => tokio::time::sleep(std::time::Duration::from_secs(60)).await,
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            serve(s).await;
                        }
                    }
                    None => serve(tcp).await,
                }
            });
        }
    });
    port
}

/// Every form in which an upstream could echo `token` back, each in a line of its own text.
fn response_forms(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    let b = token.as_bytes();
    let mut blob = b"xy".to_vec();
    blob.extend(b);
    blob.extend(b" and the rest of a longer document that base64 wraps over lines");
    let b64 = STANDARD.encode(&blob);
    let wrap = |text: &str, cols: usize, eol: &str| {
        text.as_bytes()
            .chunks(cols)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(eol)
    };
    let pct_all: String = b.iter().map(|c| format!("%{c:02X}")).collect();
    let pct_some: String = b
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if i % 2 == 0 {
                format!("%{c:02x}")
            } else {
                (c as char).to_string()
            }
        })
        .collect();
    let mixed_hex: String = hex::encode(b)
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 3 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let json_u: String = b.iter().map(|c| format!("\\u{c:04x}")).collect();
    let forms: Vec<(&'static str, String)> = vec![
        ("raw", token.to_string()),
        ("hex lower", hex::encode(b)),
        ("hex upper", hex::encode_upper(b)),
        ("hex mixed", mixed_hex),
        ("hex wrapped", wrap(&hex::encode(b), 20, "\r\n")),
        ("base64 padded", STANDARD.encode(b)),
        ("base64 unpadded", STANDARD_NO_PAD.encode(b)),
        ("base64 url", URL_SAFE.encode(b)),
        ("base64 in a blob", b64.clone()),
        ("base64 MIME 76 CRLF", wrap(&b64, 76, "\r\n")),
        ("base64 wrapped LF", wrap(&b64, 16, "\n")),
        ("percent all", pct_all.clone()),
        ("percent partial", pct_some),
        ("percent double", pct_all.replace('%', "%25")),
        (
            "json slash and unicode escapes",
            format!(
                "{{\"url\":\"https:\\/\\/x\\/{}\"}}",
                token.replace('-', "\\u002D")
            ),
        ),
        ("json unicode", format!("{{\"k\":\"{json_u}\"}}")),
        ("json escaped newlines", wrap(&b64, 30, "\\n")),
    ];
    forms
        .into_iter()
        .map(|(name, form)| (name, format!("before\n{form}\nafter\n").into_bytes()))
        .collect()
}

/// `body` with every compression layer a client could undo undone.
fn opened(body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    loop {
        let next = match body.as_slice() {
            [0x1f, 0x8b, ..] => {
                let mut out = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&body[..]),
                    &mut out,
                );
                out
            }
            [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::decode_all(&body[..]).unwrap_or_default(),
            _ => return body,
        };
        if next.is_empty() {
            return body;
        }
        body = next;
    }
}

/// Whether `text` holds `token` in a form a client could read back: raw, hex of any case,
/// base64 (also wrapped), percent-escaped once or twice, JSON-escaped.
fn holds_token(text: &[u8], token: &str) -> bool {
    let set = krbottle::secrets::SecretSet::new([("T", token.as_bytes())]).unwrap();
    set.find_in(text, None).is_some()
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

    /// curl with the head and body kept apart and the body as bytes.
    async fn curl_bytes(&self, url: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (head, body) = (dir.path().join("head"), dir.path().join("body"));
        let mut args: Vec<&str> = vec!["-D", head.to_str().unwrap(), "-o", body.to_str().unwrap()];
        args.extend(extra);
        let r = self.curl(url, &args).await;
        let head = std::fs::read_to_string(&head).unwrap_or_default();
        let body = std::fs::read(&body).unwrap_or_default();
        let status = r.body.trim().parse().unwrap_or(r.status);
        (status, head, body)
    }

    /// Sends raw bytes to the gateway and reads its answer until it closes (or 20 s).
    async fn raw_request(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.gateway).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
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
    assert_eq!(line["rule"], format!("upstream.test:{}", w.upstream_port));
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
        ("upstream.test:443".into(), 403, "port"),
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
    // The CONNECT alone resolves nothing: the name is only looked up after its ClientHello.
    let (status, text) = w.raw_connect("unpinned.example:443").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(w.lookups(), 0);
    let r = w.curl("https://unpinned.example/", &[]).await;
    assert_ne!(r.status, 200, "{}", r.body);
    let line = w
        .wait_for_line(|l| l["reason_code"] == "resolves_to_non_public_address")
        .await;
    assert!(
        line["reason"].as_str().unwrap().contains("non-public"),
        "{line}"
    );
    assert_eq!(line["decision"], "deny");
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
    // ...a secret in an unparsable authority is blocked before parsing, and logged scrubbed.
    let (status, _) = w.raw_connect(&format!("{TOKEN_B}@evil.test:443")).await;
    assert_eq!(status, 403);
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
    w.wait_for_line(|l| {
        l["decision"] == "deny"
            && (l["reason_code"] == "idle_timeout" || l["reason_code"] == "client_gone")
    })
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
async fn encoded_route_responses_are_decoded_and_scrubbed() {
    let w = world().await;
    let (status, head, body) = w
        .curl_bytes(
            &format!("https://route.test:{}/encoded", w.upstream_port),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"[REDACTED]", "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-encoding"),
        "{head}"
    );
}

/// Class 1: everything of a response that reaches the client passes the scrubber: the status
/// line's reason phrase, header names and values, informational responses; a protocol switch
/// is not relayed.
#[tokio::test(flavor = "multi_thread")]
async fn every_part_of_a_route_response_is_scrubbed() {
    let w = world().await;
    let cases: &[(&str, u16)] = &[
        ("/reason", 200),
        ("/reason-hex", 200),
        ("/hints", 200),
        ("/name", 200),
        ("/trailers", 200),
        ("/switch", 502),
    ];
    for (path, want) in cases {
        let url = format!("https://raw.test:{}{path}", w.raw_port);
        let (status, head, body) = w.curl_bytes(&url, &["--raw"]).await;
        assert_eq!(status, *want, "{path}: {head}");
        let all = [head.as_bytes(), &body].concat();
        assert!(
            !holds_token(&all, TOKEN_A),
            "{path}: {}",
            String::from_utf8_lossy(&all)
        );
    }
    let line = w
        .wait_for_line(|l| l["reason_code"] == "upstream_protocol")
        .await;
    assert_eq!(line["decision"], "fail");
    assert_no_token("the decision log", &w.log.text());
}

/// Class 2: every coding a response declares is undone (several lines, stacked, transfer
/// codings other than chunked) and the body scrubbed; what cannot be decoded is refused; an
/// undeclared compressed body is opened and withheld if it carries a secret.
#[tokio::test(flavor = "multi_thread")]
async fn every_coding_of_a_response_is_decoded_or_refused() {
    let w = world().await;
    let decoded = b"leak [REDACTED] end".to_vec();
    let cases: Vec<(&str, u16, Option<Vec<u8>>)> = vec![
        ("/te-gzip", 200, Some(decoded.clone())),
        ("/te-gzip-lines", 200, Some(decoded.clone())),
        ("/two-ce", 200, Some(decoded.clone())),
        ("/stacked", 200, Some(decoded.clone())),
        ("/zstd-deflate", 200, Some(decoded.clone())),
        ("/ce-and-te", 200, Some(decoded.clone())),
        ("/undeclared", 502, None),
        ("/undeclared-zstd", 502, None),
        ("/undeclared-clean", 200, Some(gzip(b"a clean archive"))),
        ("/br", 502, None),
        ("/te-br", 502, None),
    ];
    for (host, port) in [
        ("raw.test", w.raw_port),
        ("rawplain.test", w.raw_plain_port),
    ] {
        for (path, want, body_want) in &cases {
            let url = if host == "raw.test" {
                format!("https://{host}:{port}{path}")
            } else {
                format!("http://{host}:{port}{path}")
            };
            let (status, head, body) = w.curl_bytes(&url, &[]).await;
            assert_eq!(status, *want, "{url}: {head}");
            assert!(!holds_token(&opened(&body), TOKEN_A), "{url}: {body:?}");
            if let Some(b) = body_want {
                assert_eq!(&body, b, "{url}: {}", String::from_utf8_lossy(&body));
            }
        }
    }
    for code in ["encoding_not_readable", "secret_in_response"] {
        w.wait_for_line(|l| l["reason_code"] == code).await;
    }
}

/// Class 3: the response scrubber recognises every form the request scanner does, plus
/// wrapped base64 and hex, JSON escapes and partial percent-encoding.
#[tokio::test(flavor = "multi_thread")]
async fn response_scrubber_recognises_every_form() {
    let w = world().await;
    for (i, (name, text)) in response_forms(TOKEN_A).iter().enumerate() {
        let url = format!("https://route.test:{}/forms?form={i}", w.upstream_port);
        let (status, head, body) = w.curl_bytes(&url, &[]).await;
        assert_eq!(status, 200, "{name}: {head}");
        assert!(
            !holds_token(&body, TOKEN_A),
            "{name}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            body.starts_with(b"before\n") && body.ends_with(b"\nafter\n"),
            "{name}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            holds_token(text, TOKEN_A),
            "{name}: the table row holds the token"
        );
    }
}

/// Class 4: the whole request is scanned: method, target, header names and values, the body
/// through every coding, declared or not.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_scanned_whole() {
    use base64::engine::general_purpose::STANDARD;
    let w = world().await;
    let plain = format!("http://plain.test:{}/", w.plain_port);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        format!("@{}", path.display())
    };
    let mixed_hex: String = hex::encode(TOKEN_B)
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let wrapped_b64: String = STANDARD
        .encode(format!("k={TOKEN_B}&more=data-to-wrap-over-lines"))
        .as_bytes()
        .chunks(10)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n");
    let double_pct: String = TOKEN_B.bytes().map(|b| format!("%25{b:02X}")).collect();
    let gz = file("gz", &gzip(TOKEN_B.as_bytes()));
    let gzgz = file("gzgz", &gzip(&gzip(TOKEN_B.as_bytes())));
    let zst = file("zst", &zstd(TOKEN_B.as_bytes()));
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("method", plain.clone(), vec!["-X".into(), TOKEN_B.into()]),
        (
            "header name",
            plain.clone(),
            vec!["-H".into(), format!("x-{}: 1", hex::encode(TOKEN_B))],
        ),
        (
            "mixed-case hex value",
            plain.clone(),
            vec!["-H".into(), format!("x-debug: {mixed_hex}")],
        ),
        (
            "base64 with line breaks",
            plain.clone(),
            vec!["--data-binary".into(), wrapped_b64],
        ),
        (
            "double percent-encoding",
            format!("{plain}?q={double_pct}"),
            vec![],
        ),
        (
            "json escapes",
            plain.clone(),
            vec![
                "--data-binary".into(),
                format!("{{\"k\":\"{}\"}}", TOKEN_B.replace('_', "\\u005f")),
            ],
        ),
        (
            "undeclared gzip",
            plain.clone(),
            vec!["--data-binary".into(), gz.clone()],
        ),
        (
            "undeclared gzip in gzip",
            plain.clone(),
            vec!["--data-binary".into(), gzgz],
        ),
        (
            "undeclared zstd",
            plain.clone(),
            vec!["--data-binary".into(), zst],
        ),
        (
            "duplicated content-encoding",
            plain.clone(),
            vec![
                "--data-binary".into(),
                gz.clone(),
                "-H".into(),
                "Content-Encoding: identity".into(),
                "-H".into(),
                "Content-Encoding: gzip".into(),
            ],
        ),
    ];
    for (name, url, extra) in &cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = w.curl(url, &extra).await;
        assert_eq!(r.status, 403, "{name}: {}", r.body);
        assert!(
            r.body.contains("bundle secret TOKEN_B"),
            "{name}: {}",
            r.body
        );
    }
    // A transfer coding other than chunked (curl cannot send one).
    let body = chunked(&gzip(TOKEN_B.as_bytes()));
    let mut req = format!(
        "POST {plain} HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(&body);
    let answer = w.raw_request(&req).await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "transfer gzip: {answer}"
    );
    assert!(
        w.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    // A clean transfer-gzip body is forwarded decoded, as transfer codings are hop by hop.
    let body = chunked(&gzip(b"clean=1"));
    let mut req = format!(
        "POST {plain} HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(&body);
    let answer = w.raw_request(&req).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("clean=1"),
        "{answer}"
    );
    let blocks = w
        .log
        .lines()
        .into_iter()
        .filter(|l| l["decision"] == "block")
        .count();
    assert_eq!(blocks, cases.len() + 1);
    assert_no_token("the decision log", &w.log.text());
}

/// Class 5: a CONNECT name is scanned for secrets before anything else (a DNS query would
/// carry it out under a wildcard rule), and the ClientHello is read and checked before the
/// name is resolved or dialled.
#[tokio::test(flavor = "multi_thread")]
async fn connect_names_are_scanned_and_sni_checked_before_any_lookup() {
    let w = world().await;
    let hex_a = hex::encode(TOKEN_A);
    let cases: Vec<String> = vec![
        format!("{hex_a}.wild.test:443"),
        format!("{}.{}.wild.test:443", &hex_a[..30], &hex_a[30..]),
        format!("{}.wild.test:443", hex::encode_upper(TOKEN_B)),
        format!("x{TOKEN_B}.wild.test:443"),
    ];
    for authority in &cases {
        let (status, text) = w.raw_connect(authority).await;
        assert_eq!(status, 403, "{authority}: {text}");
        assert!(text.contains("bundle secret"), "{authority}: {text}");
    }
    // An allowed wildcard name: answered, but resolved only after a matching ClientHello.
    let (status, _) = w.raw_connect("a.wild.test:443").await;
    assert_eq!(status, 200);
    let r = w
        .curl(
            "https://b.wild.test/",
            &["--connect-to", "b.wild.test:443:a.wild.test:443"],
        )
        .await;
    assert_ne!(r.status, 200);
    w.wait_for_line(|l| l["reason_code"] == "sni_mismatch")
        .await;
    assert_eq!(
        w.lookups(),
        0,
        "nothing is resolved before a matching ClientHello"
    );
    let _ = w.curl("https://a.wild.test/", &[]).await;
    w.wait_for_line(|l| l["reason_code"] == "resolves_to_non_public_address")
        .await;
    assert_eq!(w.lookups(), 1);
    assert_no_token("the decision log", &w.log.text());
}

/// Class 6: the idle timeout covers every wait: a request body that stalls, an upstream that
/// never sends its response head.
#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_covers_every_wait() {
    let limits = Limits {
        idle_timeout_secs: 1,
        ..Limits::default()
    };
    let w = world_with(false, limits).await;
    let started = std::time::Instant::now();
    let plain = format!("http://plain.test:{}/", w.plain_port);
    let stalled_body = format!(
        "POST {plain} HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 100\r\n\r\nonly part of it"
    );
    let _ = w.raw_request(stalled_body.as_bytes()).await;
    // Inside a route tunnel too, and waiting for an upstream's head.
    let r = w
        .curl(&format!("https://raw.test:{}/stall-head", w.raw_port), &[])
        .await;
    assert_ne!(r.status, 200);
    // A request body that stalls inside a route's tunnel (curl uploads what stdin gives).
    let mut upload = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-T", "-", "--proxy"])
        .arg(format!("http://{}", w.gateway))
        .arg("--cacert")
        .arg(&w.cafile)
        .arg(format!("https://route.test:{}/upload", w.upstream_port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = upload.stdin.take().unwrap();
    stdin.write_all(b"the start of a body").await.unwrap();
    // The gateway cuts it (curl itself may not notice while it waits for its stdin).
    w.wait_for_line(|l| l["host"] == "route.test" && l["reason_code"] == "idle_timeout")
        .await;
    let _ = upload.kill().await;
    drop(stdin);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the waits were cut by the idle timeout, not the total one: {:?}",
        started.elapsed()
    );
    let head = w
        .wait_for_line(|l| {
            l["reason_code"] == "idle_timeout"
                && l["reason"].as_str().unwrap().contains("response head")
        })
        .await;
    assert_eq!(head["decision"], "fail");
    for host in ["plain.test", "route.test"] {
        w.wait_for_line(|l| {
            l["host"] == host
                && l["reason_code"] == "idle_timeout"
                && l["reason"]
                    .as_str()
                    .unwrap()
                    .contains("reading the request")
        })
        .await;
    }
}

/// Class 6: buffered bodies share one process-wide budget, not one per connection.
#[tokio::test(flavor = "multi_thread")]
async fn buffered_bodies_share_one_budget() {
    let limits = Limits {
        max_buffered_bytes: 64 * 1024,
        ..Limits::default()
    };
    let w = world_with(false, limits).await;
    let plain = format!("http://plain.test:{}/", w.plain_port);
    // One connection holds 50 KB of a body it never finishes...
    let mut holder = TcpStream::connect(w.gateway).await.unwrap();
    holder
        .write_all(
            format!("POST {plain} HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 60000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    holder.write_all(&vec![b'a'; 50_000]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // ...so another one's 40 KB does not fit.
    let big = "b".repeat(40_000);
    let r = w.curl(&plain, &["--data-binary", &big]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("memory"), "{}", r.body);
    drop(holder);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = w.curl(&plain, &["--data-binary", &big]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Class 7: every credential-shaped header and query parameter of the client is dropped on a
/// route, and the route's own `drop_headers`.
#[tokio::test(flavor = "multi_thread")]
async fn route_drops_every_credential_of_the_client() {
    let w = world().await;
    let names = [
        "Authorization",
        "X-Api-Key",
        "api-key",
        "x-goog-api-key",
        "private-token",
        "x-auth-token",
        "x-session-id",
        "X-Client-Secret",
        "x-password",
        "Cookie",
        "X-Custom-Account",
    ];
    let mut extra: Vec<String> = Vec::new();
    for name in names {
        extra.push("-H".into());
        extra.push(format!("{name}: {CLIENT_FAKE}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let url = format!(
        "https://route.test:{}/v1/x?key={CLIENT_FAKE}&q=kept&access_token={CLIENT_FAKE}&Session={CLIENT_FAKE}",
        w.upstream_port
    );
    let r = w.curl(&url, &extra).await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    let seen = w.seen.lock().unwrap().clone();
    let (headers, _) = seen.last().unwrap();
    assert!(!headers.contains(CLIENT_FAKE), "{headers}");
    assert!(headers.contains("/v1/x?q=kept "), "{headers}");
    assert!(
        headers.contains(&format!("authorization: Bearer {TOKEN_A}\n")),
        "{headers}"
    );
    assert!(!headers.contains("x-custom-account"), "{headers}");
}

/// Class 8: rules are bound to ports: 443 for CONNECT and 80 for plain HTTP unless the rule
/// says `host:port`; a route injects its token on its own port only.
#[tokio::test(flavor = "multi_thread")]
async fn rules_are_bound_to_ports() {
    let w = world().await;
    let p = w.upstream_port;
    let cases: Vec<(String, u16)> = vec![
        (format!("route.test:{p}"), 200),
        ("route.test:443".into(), 403),
        (format!("route.test:{}", p.wrapping_add(1).max(1)), 403),
        (format!("upstream.test:{p}"), 200),
        ("upstream.test:443".into(), 403),
        ("upstream.test:8443".into(), 403),
        ("a.wild.test:8443".into(), 403),
        ("a.wild.test:443".into(), 200),
    ];
    for (authority, want) in &cases {
        let (status, text) = w.raw_connect(authority).await;
        assert_eq!(status, *want, "CONNECT {authority}: {text}");
        if *want == 403 {
            assert!(text.contains("port_not_allowed"), "{authority}: {text}");
            let entry = authority.strip_suffix(":443").unwrap_or(authority);
            assert!(
                text.contains(&format!("add \"{entry}\"")),
                "{authority}: {text}"
            );
        }
    }
    let plain_cases: Vec<(String, u16)> = vec![
        (format!("http://plain.test:{}/", w.plain_port), 200),
        ("http://plain.test/".into(), 403),
        (
            format!("http://plain.test:{}/", w.plain_port.wrapping_add(1).max(1)),
            403,
        ),
    ];
    for (url, want) in &plain_cases {
        let r = w.curl(url, &[]).await;
        assert_eq!(r.status, *want, "{url}: {}", r.body);
    }
    assert!(
        !w.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(h, _)| h.contains(TOKEN_A)),
        "the token went nowhere (no request was made in the route's tunnels)"
    );
}

/// A route over an HTTP/2 upstream: the upstream sees HTTP/2 and the response is scrubbed.
#[tokio::test(flavor = "multi_thread")]
async fn route_over_an_http2_upstream() {
    let w = world().await;
    let r = w
        .curl(
            &format!("https://route.test:{}/leak", w.upstream_port),
            &["-i"],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_no_token("the client's response", &r.body);
    let seen = w.seen.lock().unwrap().clone();
    let (headers, _) = seen.last().unwrap();
    assert!(headers.starts_with("GET https://route.test:"), "{headers}");
    assert!(
        headers.lines().next().unwrap().ends_with("HTTP/2.0"),
        "{headers}"
    );
}

/// Every path writes a decision line; upstream failures carry their reason, and every denial
/// explains itself to the client with what would allow it.
#[tokio::test(flavor = "multi_thread")]
async fn every_path_is_logged_and_denials_explain_themselves() {
    let w = world().await;
    let (status, text) = w.raw_connect("evil.test:443").await;
    assert_eq!(status, 403);
    for needle in [
        "refused: CONNECT evil.test:443",
        "reason_code: not_allowed",
        "to allow it: add \"evil.test\" to `allow` of [bottles.test] in krbottle.toml",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let answer = w
        .raw_request(b"GET /not-a-proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let r = w
        .curl(&format!("https://down.test:{}/", w.down_port), &[])
        .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("could not complete") && r.body.contains("upstream_failed"),
        "{}",
        r.body
    );
    let failed = w
        .wait_for_line(|l| l["reason_code"] == "upstream_failed")
        .await;
    assert_eq!(failed["decision"], "fail");
    assert!(
        failed["reason"].as_str().unwrap().contains("connect"),
        "{failed}"
    );
    let lines = w.log.lines();
    let deny = lines.iter().find(|l| l["host"] == "evil.test").unwrap();
    assert_eq!(deny["reason_code"], "not_allowed");
    assert!(deny["allow_with"].as_str().unwrap().contains("evil.test"));
    assert!(krbottle::daemon::gateway::log::is_denial(
        deny.to_string().as_bytes()
    ));
    w.wait_for_line(|l| l["reason_code"] == "not_a_proxy_request")
        .await;
    for l in &lines {
        assert!(l["decision"].is_string() && l.get("time").is_some(), "{l}");
        if l["decision"] != "allow" && l["decision"] != "route" {
            assert!(
                l["reason_code"].is_string() && l["reason"].is_string(),
                "{l}"
            );
        }
    }
}
