//! The bundle through Docker: `krbottle bundle up/down/gc/logs` with the real engine, `curl`
//! as the client. These tests skip (saying why) without a Docker engine or the local base
//! image, and fail instead when `CI` is set.

mod common;

use std::convert::Infallible;
use std::path::Path;

use krbottle::bundle::image::Origin;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_krbottle");
const TOKEN: &str = "sk-docker-test-token-0123456789";

/// Returns true when the test should go on (see `common::require_docker`: the engine and the
/// base image; under CI their absence fails the test).
fn docker_available() -> bool {
    common::require_docker(&common::current_test())
}

fn krbottle(state: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("KRBOTTLE_STATE_DIR", state);
    if let Some(t) = token {
        cmd.env("KRB_DOCKER_TEST_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// IDs of the containers and networks labelled with `bottle`.
fn leftovers(bottle: &str) -> String {
    let filter = format!("label=krbottle.bottle={bottle}");
    docker(&["ps", "-aq", "--filter", &filter])
        + &docker(&["network", "ls", "-q", "--filter", &filter])
}

fn manifest(dir: &Path, bottles: &[&str], token_route: bool) -> std::path::PathBuf {
    let mut text = String::new();
    for b in bottles {
        text.push_str(&format!("[bottles.{b}]\nallow = [\"example.com\"]\n"));
        if token_route {
            text.push_str(&format!(
                "[[bottles.{b}.routes]]\nhost = \"api.example.com\"\nheader = \"authorization\"\nscheme = \"Bearer\"\ntoken_env = \"KRB_DOCKER_TEST_TOKEN\"\n"
            ));
        }
    }
    let path = dir.join("krbottle.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A test's bottles: a temp dir holding their state dir and manifest. Their bundles are taken
/// down when it is dropped, so a failing test leaves nothing behind.
struct Bottles {
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    names: Vec<String>,
    manifest: std::path::PathBuf,
}

impl Bottles {
    /// Bottles named `kt<pid><suffix>`, each allowing example.com, with a token route if asked.
    fn new(suffixes: &[&str], token_route: bool) -> Bottles {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let names: Vec<String> = suffixes
            .iter()
            .map(|s| format!("kt{}{s}", std::process::id()))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let manifest = manifest(dir.path(), &refs, token_route);
        Bottles {
            dir,
            state,
            names,
            manifest,
        }
    }

    /// The first (often only) bottle's name.
    fn name(&self) -> &str {
        &self.names[0]
    }

    /// Starts `bundle up` of the first bottle with a token the gateway refuses (a control
    /// character), so the bundle does not become ready and `up` is still waiting; returns once
    /// its container exists (asserted).
    fn start_stuck_up(&self, stderr: Stdio) -> std::process::Child {
        let mut up = Command::new(BIN)
            .args(["bundle", "up", self.name(), "--manifest"])
            .arg(&self.manifest)
            .env("KRBOTTLE_STATE_DIR", &self.state)
            // Long enough for the host's check, but the gateway cannot put a control character
            // in a header: it fails at start, init restarts it, and `up` waits until it reads
            // the daemon's error (about a second), which is when these tests act.
            .env("KRB_DOCKER_TEST_TOKEN", "token-with-a-\u{1}-control-char")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let filter = format!("label=krbottle.bottle={}", self.name());
        for _ in 0..1200 {
            if !docker(&["ps", "-q", "--filter", &filter]).trim().is_empty() {
                return up;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = up.kill();
        let _ = up.wait();
        panic!("the bundle container never appeared");
    }
}

impl Drop for Bottles {
    fn drop(&mut self) {
        for b in &self.names {
            let _ = krbottle(&self.state, &["bundle", "down", b], None);
        }
    }
}

fn up_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "bundle up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn up_serves_the_gateway_and_down_removes_everything() {
    if !docker_available() {
        return;
    }
    let fx = Bottles::new(&["up"], true);
    let (state, bottle) = (&fx.state, fx.name());
    let m = fx.manifest.to_str().unwrap();
    let out = krbottle(
        state,
        &["bundle", "up", bottle, "--manifest", m, "--json"],
        Some(TOKEN),
    );
    let record = up_json(&out);
    let addr = record["endpoints"]["gateway"].as_str().unwrap().to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "published on loopback only: {addr}"
    );

    let denied = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &format!("http://{addr}"),
            "https://evil.test/",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&denied.stderr).contains("403"));

    // The CA key stays owner-only on the host; the certificate is for the guest.
    let key = state.join(format!("bottles/{bottle}/bundle/ca.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let logs = krbottle(state, &["bundle", "logs", bottle], None);
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(
        logs.contains(r#""host":"evil.test""#) && logs.contains(r#""decision":"deny""#),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN));
    // Denials only: each line a deny or block, explained.
    let denied = krbottle(state, &["bundle", "logs", bottle, "--denied"], None);
    let denied = String::from_utf8_lossy(&denied.stdout).to_string();
    assert!(!denied.trim().is_empty(), "no denial listed");
    for line in denied.lines() {
        assert!(
            line.contains(r#""decision":"deny""#) || line.contains(r#""decision":"block""#),
            "{line}"
        );
        assert!(line.contains("reason_code"), "{line}");
    }

    // The token is in no image layer or config, and on no command line in the container.
    let image = record["image"].as_str().unwrap();
    assert!(!docker(&["image", "inspect", image]).contains(TOKEN));
    assert!(!docker(&["history", "--no-trunc", image]).contains(TOKEN));
    let top = docker(&[
        "top",
        record["container"].as_str().unwrap(),
        "-eo",
        "pid,args",
    ]);
    assert!(top.contains("gateway") && !top.contains(TOKEN), "{top}");

    let down = krbottle(state, &["bundle", "down", bottle], None);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        leftovers(bottle).trim(),
        "",
        "nothing of the bottle remains"
    );
}

#[test]
fn five_bundles_at_once_get_distinct_networks_and_ports() {
    if !docker_available() {
        return;
    }
    let fx = Bottles::new(&["f0", "f1", "f2", "f3", "f4"], false);
    let (state, bottles, m) = (&fx.state, &fx.names, &fx.manifest);
    let children: Vec<_> = bottles
        .iter()
        .map(|b| {
            Command::new(BIN)
                .args(["bundle", "up", b, "--json", "--manifest"])
                .arg(m)
                .env("KRBOTTLE_STATE_DIR", state)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let records: Vec<serde_json::Value> = children
        .into_iter()
        .map(|c| up_json(&c.wait_with_output().unwrap()))
        .collect();
    let mut ports: Vec<&str> = records
        .iter()
        .map(|r| r["endpoints"]["gateway"].as_str().unwrap())
        .collect();
    let mut subnets: Vec<String> = records
        .iter()
        .map(|r| {
            docker(&[
                "network",
                "inspect",
                r["network"].as_str().unwrap(),
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            ])
        })
        .collect();
    for b in bottles {
        assert!(
            krbottle(state, &["bundle", "down", b], None)
                .status
                .success()
        );
        assert_eq!(leftovers(b).trim(), "");
    }
    ports.sort();
    ports.dedup();
    subnets.sort();
    subnets.dedup();
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert_eq!(subnets.len(), 5, "{subnets:?}");
}

#[test]
fn gc_removes_what_a_killed_up_left_behind() {
    if !docker_available() {
        return;
    }
    let fx = Bottles::new(&["gc"], true);
    let (state, bottle) = (&fx.state, fx.name());
    let mut up = fx.start_stuck_up(Stdio::null());
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(
        !leftovers(bottle).trim().is_empty(),
        "the kill left a container and network"
    );

    // gc of another state directory must not touch this bottle's objects.
    let other = fx.dir.path().join("other-state");
    assert!(krbottle(&other, &["bundle", "gc"], None).status.success());
    assert!(!leftovers(bottle).trim().is_empty());

    let gc = krbottle(state, &["bundle", "gc", "--json"], None);
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let removed: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert_eq!(
        removed["containers"].as_array().unwrap().len(),
        1,
        "{removed}"
    );
    assert_eq!(
        removed["networks"].as_array().unwrap().len(),
        1,
        "{removed}"
    );
    assert_eq!(leftovers(bottle).trim(), "");
}

/// The HTTPS (8443) and HTTP (8080) echo upstream, run inside a container on the bundle's
/// network by `route_through_the_bundle_container`. It prints each request head on stdout
/// (read back with `docker logs`) and answers with the head and body it received.
#[test]
#[ignore = "the upstream server, started inside a container by another test"]
fn echo_upstream_main() {
    let certs =
        std::path::PathBuf::from(std::env::var_os("KRB_ECHO_CERTS").expect("KRB_ECHO_CERTS"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(certs.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tls = tokio::net::TcpListener::bind("0.0.0.0:8443").await.unwrap();
        let plain = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
        println!("echo upstream ready");
        let svc = || {
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                use http_body_util::BodyExt;
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let mut head = format!("{} {}\n", parts.method, parts.uri);
                for (k, v) in &parts.headers {
                    head.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                }
                println!("{head}");
                let out = format!("{head}\n{}", String::from_utf8_lossy(&body));
                Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(out),
                )))
            })
        };
        let plain_task = tokio::spawn(async move {
            loop {
                let (tcp, _) = plain.accept().await.unwrap();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc()),
                );
            }
        });
        loop {
            let (tcp, _) = tls.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc())
                        .await;
                }
            });
            if plain_task.is_finished() {
                return;
            }
        }
    });
}

/// The whole path through Docker: curl on the host → the bundle's published gateway port →
/// the gateway in the bundle container → an HTTPS upstream container on the bundle's network
/// under allowlisted names, with its own test CA.
#[test]
fn route_through_the_bundle_container() {
    use krbottle::bundle::container;
    use krbottle::daemon::gateway::config::GatewayConfig;
    use krbottle::manifest::{Manifest, Route};

    if !docker_available() {
        return;
    }
    // Its own manifest, written below, replaces the fixture's.
    let fx = Bottles::new(&["rt"], false);
    let (dir, state, bottle_name) = (&fx.dir, &fx.state, fx.name().to_string());

    // The upstream's own CA and certificate for both of its names.
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (ca_pem, _, _) = common::test_pki(&certs, &["upstream.test", "route.test"]);
    let ca_cert = std::fs::read_to_string(&ca_pem).unwrap();

    let manifest = Manifest::parse(
        Path::new("krbottle.toml"),
        &format!(
            "[bottles.{bottle_name}]\nallow = [\"upstream.test:8443\", \"upstream.test:8080\"]\n"
        ),
    )
    .unwrap();
    let bottle = &manifest.bottles[&bottle_name];
    let mut gateway = GatewayConfig::for_bottle(bottle);
    gateway.routes = vec![Route {
        host: "route.test:8443".into(),
        header: "authorization".into(),
        scheme: Some("Bearer".into()),
        token_env: "KRB_DOCKER_TEST_TOKEN".into(),
        drop_headers: Vec::new(),
    }];
    gateway.internal_hosts = vec!["upstream.test".into(), "route.test".into()];
    gateway.upstream_ca_file =
        Some(Path::new(krbottle::daemon::CONFIG_DIR).join("upstream-ca.pem"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let record = runtime.block_on(async {
        let engine = krbottle::docker::Engine::connect().await.unwrap();
        let image = krbottle::bundle::image::ensure(&engine, Origin::Host(BIN.into()))
            .await
            .unwrap();
        let mut request = container::BundleRequest::for_bottle(bottle, &image).unwrap();
        for (daemon, config) in &mut request.daemons {
            if daemon.name == "gateway" {
                *config = serde_json::to_vec(&gateway).unwrap();
            }
        }
        request.files = vec![("upstream-ca.pem".into(), ca_cert.clone().into_bytes())];
        request.extra_secrets = vec![("KRB_DOCKER_TEST_TOKEN".into(), TOKEN.into())];
        let state = krbottle::state::StateRoot::at(state);
        let never = std::sync::atomic::AtomicBool::new(false);
        container::up(&engine, &request, &state, |_| None, &never)
            .await
            .unwrap()
    });
    let proxy = format!("http://{}", record.endpoints["gateway"]);

    // The upstream container, labelled like the bundle so `down` removes it with the network.
    let upstream = format!("{bottle_name}-upstream");
    let test_binary = std::env::current_exe().unwrap();
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &upstream,
        "--network",
        &record.network,
        "--network-alias",
        "upstream.test",
        "--network-alias",
        "route.test",
        "--label",
        "krbottle.role=bundle",
        "--label",
        &format!("krbottle.bottle={bottle_name}"),
        "--label",
        &format!("krbottle.state-dir={}", state.display()),
        "-v",
        &format!("{}:/t/test:ro", test_binary.display()),
        "-v",
        &format!("{}:/certs:ro", certs.display()),
        "-e",
        "KRB_ECHO_CERTS=/certs",
        krbottle::bundle::image::BASE_IMAGE,
        "/t/test",
        "--ignored",
        "--exact",
        "echo_upstream_main",
        "--nocapture",
    ]);
    assert!(!run.contains("Error"), "{run}");

    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--proxy",
                &proxy,
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let upstream_ca = certs.join("ca.pem");
    let upstream_ca = upstream_ca.to_str().unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if curl(&["--cacert", upstream_ca, "https://upstream.test:8443/ready"]).ends_with("200") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ready,
        "the upstream never answered through the gateway: {}",
        docker(&["logs", &upstream])
    );

    // Route: the upstream sees the real token, never the client's; the client never sees it.
    let bottle_ca = krbottle::state::StateRoot::at(state)
        .bottle(&bottle_name)
        .unwrap()
        .bundle_dir()
        .join(krbottle::daemon::CA_CERT_FILE);
    let answer = curl(&[
        "--cacert",
        bottle_ca.to_str().unwrap(),
        "-H",
        "Authorization: Bearer client-fake-credential",
        "https://route.test:8443/v1/echo",
    ]);
    assert!(answer.ends_with("200"), "{answer}");
    assert!(
        answer.contains("authorization: Bearer [REDACTED]"),
        "{answer}"
    );
    assert!(
        !answer.contains(TOKEN) && !answer.contains("client-fake-credential"),
        "{answer}"
    );
    let seen = docker(&["logs", &upstream]);
    assert!(
        seen.contains(&format!("authorization: Bearer {TOKEN}")),
        "{seen}"
    );
    assert!(!seen.contains("client-fake-credential"), "{seen}");

    // Secret scanning: the token in clear HTTP to an allowed, non-route host is blocked.
    let blocked = curl(&[&format!("http://upstream.test:8080/?k={TOKEN}")]);
    assert!(
        blocked.ends_with("403") && blocked.contains("KRB_DOCKER_TEST_TOKEN"),
        "{blocked}"
    );

    let logs = krbottle(state, &["bundle", "logs", &bottle_name], None);
    let logs =
        String::from_utf8_lossy(&logs.stdout).to_string() + &String::from_utf8_lossy(&logs.stderr);
    assert!(
        logs.contains(r#""decision":"route""#) && logs.contains(r#""decision":"block""#),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN), "{logs}");

    let down = krbottle(state, &["bundle", "down", &bottle_name], None);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        leftovers(&bottle_name).trim(),
        "",
        "nothing of the bottle remains"
    );
}

#[test]
fn interrupted_up_removes_what_it_created() {
    if !docker_available() {
        return;
    }
    let fx = Bottles::new(&["int"], true);
    let bottle = fx.name();
    let up = fx.start_stuck_up(Stdio::piped());
    let pid = rustix::process::Pid::from_raw(up.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = up.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Interrupted"));
    assert_eq!(
        leftovers(bottle).trim(),
        "",
        "an interrupted up leaves nothing behind"
    );
}

/// The macOS path, run here: the bundle image compiles krbottle from the source the binary
/// carries (dev profile, to keep CI short; the default is release), and that binary serves.
#[test]
fn up_from_source_compiles_krbottle_in_the_image() {
    if !docker_available() {
        return;
    }
    let fx = Bottles::new(&["src"], false);
    let (state, bottle, m) = (&fx.state, fx.name(), &fx.manifest);
    let out = Command::new(BIN)
        .args(["bundle", "up", bottle, "--json", "--manifest"])
        .arg(m)
        .env("KRBOTTLE_STATE_DIR", state)
        .env("KRBOTTLE_BUNDLE_FROM", "source")
        .env("KRBOTTLE_BUNDLE_PROFILE", "dev")
        // This machine's egress intercepts TLS; its CA is in the host's trust store.
        .env("KRBOTTLE_BUNDLE_BUILD_CA", host_ca_bundle())
        .output()
        .unwrap();
    let record = up_json(&out);
    let addr = record["endpoints"]["gateway"].as_str().unwrap().to_string();
    let denied = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--proxy"])
        .arg(format!("http://{addr}"))
        .arg("https://evil.test/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("403"),
        "{denied:?}"
    );

    // The image's binary was compiled there: same version, not the host's bytes.
    let image = record["image"].as_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec![
            "run",
            "--rm",
            "--entrypoint",
            "/usr/local/bin/krbottle",
            image,
        ];
        all.extend_from_slice(args);
        docker(&all)
    };
    let ours = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(run(&["--version"]), String::from_utf8_lossy(&ours.stdout));
    let in_image = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "sha256sum",
        image,
        "/usr/local/bin/krbottle",
    ]);
    let host = Command::new("sha256sum").arg(BIN).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    let digest = |s: &str| s.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(digest(&in_image).len(), 64, "{in_image}");
    assert_ne!(
        digest(&in_image),
        digest(&host),
        "the host binary was copied"
    );

    let down = krbottle(state, &["bundle", "down", bottle], None);
    assert!(down.status.success());
    assert_eq!(leftovers(bottle).trim(), "");
}

#[test]
fn bad_bundle_origin_is_refused_by_name() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(dir.path(), &["kbad"], false);
    let out = Command::new(BIN)
        .args(["bundle", "up", "kbad", "--manifest"])
        .arg(&m)
        .env("KRBOTTLE_STATE_DIR", dir.path().join("state"))
        .env("KRBOTTLE_BUNDLE_FROM", "elsewhere")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("KRBOTTLE_BUNDLE_FROM=\"elsewhere\"") && err.contains("`source`"),
        "{err}"
    );
}

/// The host's CA bundle, as curl and OpenSSL find it.
fn host_ca_bundle() -> String {
    std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into())
}

/// A binary that does not run in the bundle (here `/bin/false`: runs, says nothing, fails)
/// fails the build with the reason, and leaves no image behind to be taken for a good one.
#[test]
fn a_binary_that_cannot_run_in_the_bundle_fails_the_build() {
    if !docker_available() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = krbottle::docker::Engine::connect().await.unwrap();
        let err = krbottle::bundle::image::ensure(&engine, Origin::Host("/bin/false".into()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not run there") && err.contains("exit code 1"),
            "{err}"
        );
        assert!(err.contains("KRBOTTLE_BUNDLE_FROM=source"), "{err}");
        let tag = krbottle::bundle::image::current_tag(&engine, Origin::Host("/bin/false".into()))
            .await
            .unwrap();
        assert!(
            engine.client().inspect_image(&tag).await.is_err(),
            "{tag} was kept"
        );
    });
}
