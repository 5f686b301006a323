//! The two proxies under test, each in its own process and killed on drop: the gateway daemon
//! (`krbottle bundle gateway`) and mitmproxy's `mitmdump` with an addon doing a route's work.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpStream;

use super::{MITMDUMP_START_TIMEOUT, ROUTE_HOST, SPLICE_HOST, TOKEN, TOKEN_ENV};
use crate::ca::BottleCa;
use crate::daemon::gateway::LISTENING as GATEWAY_LISTENING;
use crate::daemon::gateway::config::{GatewayConfig, Limits};
use crate::env_vars;
use crate::manifest::Route;

/// mitmproxy's side of the route: the same header swap and scrubbing as a gateway route.
/// `{TOKEN_ENV}` is replaced by the variable's name before the addon is written.
const MITM_ADDON: &str = r#"
import base64, os
TOKEN = os.environ["{TOKEN_ENV}"].encode()
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

/// The gateway daemon (`krbottle bundle gateway`, as the bundle runs it) on 127.0.0.1, with one
/// allowed host and one route on the upstream's `port`, both pinned to 127.0.0.1. Its own
/// process, like mitmproxy's, so neither shares a runtime with the client and the upstream.
pub(super) fn start_gateway(
    dir: &Path,
    bottle_ca: &BottleCa,
    upstream_ca_file: &Path,
    port: u16,
) -> anyhow::Result<ProxyProcess> {
    let (ca_cert, ca_key) = (dir.join("bottle-ca.pem"), dir.join("bottle-ca.key"));
    bottle_ca.write(&ca_cert, &ca_key)?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let config = GatewayConfig {
        bottle: "bench".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        allow: vec![format!("{SPLICE_HOST}:{port}")],
        routes: vec![Route {
            host: format!("{ROUTE_HOST}:{port}"),
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            token_env: TOKEN_ENV.into(),
            drop_headers: Vec::new(),
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
pub(super) fn find_mitmdump() -> Result<PathBuf, String> {
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

pub(super) fn mitmdump_version(mitmdump: &Path) -> Option<String> {
    let out = Command::new(mitmdump).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().map(|l| l.trim().to_owned())
}

/// A proxy in its own process (the gateway daemon or mitmdump), killed on drop.
pub(super) struct ProxyProcess {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mitmdump.
pub(super) struct Mitmdump {
    pub(super) proxy: ProxyProcess,
    /// The CA mitmproxy signs its interception certificates with.
    pub(super) ca_pem: String,
}

impl Mitmdump {
    pub(super) async fn start(
        mitmdump: &Path,
        dir: &Path,
        upstream_ca: &Path,
    ) -> anyhow::Result<Mitmdump> {
        let addon = dir.join("route_addon.py");
        std::fs::write(&addon, MITM_ADDON.replace("{TOKEN_ENV}", TOKEN_ENV))?;
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
