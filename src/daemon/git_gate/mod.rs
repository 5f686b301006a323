//! git-gate: the agent's git remote. Stock `git` serves one bare repository per upstream of
//! the bottle over git's smart HTTP (`git http-backend` behind this small hyper server), at
//! `http://127.0.0.1:<GIT_GATE>/NAME.git` in the guest. The SSH key and the host keys never
//! leave the bundle; a push goes upstream only through the pre-receive hook ([`hook`]), which
//! applies the ref policy ([`policy`]) and the shared secret scanner, then pushes upstream
//! itself ([`upstream`]).
//!
//! Why smart HTTP rather than `git://`: `git daemon` has no hook into a fetch to refresh the
//! gate's copy first, while here the server sees each request and fetches from the upstream
//! before it answers a ref advertisement (at most every `fetch_interval_secs`); hyper is what
//! the other daemons already use, and `/healthz` is the same readiness probe.
//!
//! Invariants:
//! - Only `/NAME.git/info/refs?service=…`, `/NAME.git/git-upload-pack` and
//!   `/NAME.git/git-receive-pack` of the configured names reach git, which gets a `PATH_INFO`
//!   built here from the name, never the client's path: no `../`, absolute path or other
//!   repository name can make git read anything but these repositories (the keys are mounted
//!   outside the repositories' directory). Dumb-HTTP file reads are refused.
//! - One push at a time per repository, never while the gate fetches from the upstream.
//! - One JSON decision line per pushed ref on stdout (written by the hook, relayed here).

pub mod config;
pub mod hook;
pub mod policy;
pub mod upstream;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use self::config::{ConfigError, GitGateConfig, RepoConfig};
use super::server::{self, ListenError};
use super::{DaemonError, config_file};

/// The daemon's name (its table line, messages).
const NAME: &str = "git-gate";
/// What the daemon prints on stderr before the address it listens on.
pub const LISTENING: &str = "krbottle git-gate listening on ";
const MAX_CONNECTIONS: usize = 32;
/// The largest fetch negotiation read (the client's `have` lines).
const MAX_UPLOAD_REQUEST: u64 = 64 * 1024 * 1024;

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum GitGateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot prepare the gate repository {}; check that the repositories' directory is mounted read-write", dir.display())]
    Prepare {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// One gate repository and when it last fetched from its upstream.
struct Repo {
    config: RepoConfig,
    dir: PathBuf,
    /// Held while fetching from upstream and while a push runs.
    state: Arc<Mutex<Option<Instant>>>,
}

/// The server, ready to serve.
pub struct Server {
    config: GitGateConfig,
    env: Vec<(OsString, OsString)>,
    repos: HashMap<String, Repo>,
}

/// The git services a client may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// `GET info/refs?service=git-upload-pack|git-receive-pack`.
    Advertise {
        push: bool,
    },
    UploadPack,
    ReceivePack,
}

/// The repository name and service of a request path, if it is one git-gate serves.
fn route<'a>(path: &'a str, query: Option<&str>) -> Option<(&'a str, Service)> {
    let rest = path.strip_prefix('/')?;
    let (repo, service) = if let Some(r) = rest.strip_suffix("/info/refs") {
        let push = match query? {
            "service=git-upload-pack" => false,
            "service=git-receive-pack" => true,
            _ => return None,
        };
        (r, Service::Advertise { push })
    } else if let Some(r) = rest.strip_suffix("/git-upload-pack") {
        (r, Service::UploadPack)
    } else if let Some(r) = rest.strip_suffix("/git-receive-pack") {
        (r, Service::ReceivePack)
    } else {
        return None;
    };
    let repo = repo.strip_suffix('/').unwrap_or(repo);
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    crate::manifest::is_valid_name(repo).then_some((repo, service))
}

impl Server {
    /// Builds the server of `config` (read from `config_path`, which the hooks read too):
    /// creates the bare repositories that are missing and writes their hooks.
    pub fn new(config: GitGateConfig, config_path: &Path) -> Result<Server, GitGateError> {
        let prepare = |dir: &Path, e| GitGateError::Prepare {
            dir: dir.to_path_buf(),
            source: e,
        };
        std::fs::create_dir_all(&config.repos_dir).map_err(|e| prepare(&config.repos_dir, e))?;
        let env = upstream::base_env(&config).map_err(|e| prepare(&config.repos_dir, e))?;
        let mut repos = HashMap::new();
        for r in &config.repos {
            let dir = config.repo_dir(&r.name);
            upstream::prepare_repo(&env, &dir, config_path, &r.name)
                .map_err(|e| prepare(&dir, e))?;
            repos.insert(
                r.name.clone(),
                Repo {
                    config: r.clone(),
                    dir,
                    state: Arc::new(Mutex::new(None)),
                },
            );
        }
        let decisions = config.repos_dir.join(".decisions");
        std::fs::create_dir_all(&decisions).map_err(|e| prepare(&decisions, e))?;
        Ok(Server { config, env, repos })
    }

    /// Fetches every repository from its upstream (in the background: clients wait for it).
    fn fetch_all_at_start(self: &Arc<Self>) {
        for name in self.repos.keys() {
            let (server, name) = (self.clone(), name.clone());
            tokio::spawn(async move {
                let repo = &server.repos[&name];
                let mut last = repo.state.lock().await;
                server.fetch(repo, &mut last, true).await;
            });
        }
    }

    /// Fetches `repo` from its upstream (holding its lock: `last`).
    async fn fetch(&self, repo: &Repo, last: &mut Option<Instant>, first: bool) {
        let (env, dir, cfg) = (self.env.clone(), repo.dir.clone(), repo.config.clone());
        let result = tokio::task::spawn_blocking(move || {
            let r = upstream::fetch(&env, &dir, &cfg);
            // Until the gate's HEAD names a branch it has (the upstream may have been
            // unreachable at start), it follows the upstream's.
            if r.is_ok() && (first || !upstream::head_resolves(&env, &dir)) {
                upstream::follow_head(&env, &dir, &cfg);
            }
            r
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        *last = Some(Instant::now());
        if let Err(why) = result {
            eprintln!(
                "cannot fetch {} from its upstream {}: {why}",
                repo.config.name, repo.config.upstream
            );
        }
    }

    /// Serves clients from `listener` until `stop` completes.
    pub async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let server = Arc::new(self);
        server.fetch_all_at_start();
        server::serve(listener, MAX_CONNECTIONS, stop, move |req, peer| {
            let server = server.clone();
            async move { server.handle(req, peer).await }
        })
        .await;
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Some(answer) = server::healthz(NAME, &req) {
            return answer;
        }
        let path = req.uri().path().to_string();
        let names = || {
            let mut n: Vec<&str> = self.repos.keys().map(String::as_str).collect();
            n.sort();
            n.join(", ")
        };
        let Some((name, service)) = route(&path, req.uri().query()) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!(
                    "not a git smart-HTTP request of this gate; clone http://<gate>/NAME.git (this gate serves: {})",
                    names()
                ),
            );
        };
        let Some(repo) = self.repos.get(name) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no repository {name} at this gate; it serves: {}", names()),
            );
        };
        let method_ok = match service {
            Service::Advertise { .. } => req.method() == Method::GET,
            _ => req.method() == Method::POST,
        };
        if !method_ok {
            return text(StatusCode::METHOD_NOT_ALLOWED, "not a smart-HTTP method");
        }
        let guard = match service {
            Service::Advertise { .. } => {
                let mut last = repo.state.lock().await;
                let every = Duration::from_secs(u64::from(repo.config.fetch_interval_secs));
                if last.is_none_or(|t| t.elapsed() >= every) {
                    self.fetch(repo, &mut last, false).await;
                }
                None
            }
            Service::ReceivePack => Some(repo.state.clone().lock_owned().await),
            Service::UploadPack => None,
        };
        let limit = match service {
            Service::ReceivePack => repo.config.max_push_bytes.saturating_mul(2) + (16 << 20),
            _ => MAX_UPLOAD_REQUEST,
        };
        match self.cgi(repo, service, req, peer, limit, guard).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("git http-backend for {name}: {e}");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the gate's git failed; see the bundle's logs",
                )
            }
        }
    }

    /// Runs `git http-backend` for one request and streams its answer.
    async fn cgi(
        &self,
        repo: &Repo,
        service: Service,
        req: Request<Incoming>,
        peer: SocketAddr,
        limit: u64,
        guard: Option<tokio::sync::OwnedMutexGuard<Option<Instant>>>,
    ) -> std::io::Result<Response<Body>> {
        let name = &repo.config.name;
        let (path_info, query) = match service {
            Service::Advertise { push: false } => ("info/refs", "service=git-upload-pack"),
            Service::Advertise { push: true } => ("info/refs", "service=git-receive-pack"),
            Service::UploadPack => ("git-upload-pack", ""),
            Service::ReceivePack => ("git-receive-pack", ""),
        };
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("http-backend")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GIT_PROJECT_ROOT", &self.config.repos_dir)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", format!("/{name}.git/{path_info}"))
            .env("QUERY_STRING", query)
            .env("REQUEST_METHOD", req.method().as_str())
            .env("REMOTE_USER", "agent")
            .env("REMOTE_ADDR", peer.ip().to_string())
            .current_dir(&repo.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let headers = req.headers();
        let header = |h: &header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
        if let Some(t) = header(&header::CONTENT_TYPE) {
            cmd.env("CONTENT_TYPE", t);
        }
        if let Some(l) = header(&header::CONTENT_LENGTH).filter(|l| l.parse::<u64>().is_ok()) {
            cmd.env("CONTENT_LENGTH", l);
        }
        if let Some(e) =
            header(&header::CONTENT_ENCODING).filter(|e| matches!(*e, "gzip" | "x-gzip"))
        {
            cmd.env("HTTP_CONTENT_ENCODING", e);
        }
        let protocol = headers.get("git-protocol").and_then(|v| v.to_str().ok());
        if let Some(p) = protocol.filter(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=:._-".contains(&b))
        }) {
            cmd.env("HTTP_GIT_PROTOCOL", p);
        }
        let decisions = match service {
            Service::ReceivePack => {
                let path = self.config.repos_dir.join(".decisions").join(format!(
                    "{}-{}.jsonl",
                    std::process::id(),
                    unique()
                ));
                std::fs::File::create(&path)?;
                cmd.env(crate::env_vars::KRBOTTLE_GIT_GATE_DECISIONS, &path);
                Some(path)
            }
            _ => None,
        };
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let mut body = req.into_body();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data() {
                    sent += data.len() as u64;
                    if sent > limit || stdin.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
        let label = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("git for {label}: {line}");
            }
        });
        let mut out = BufReader::new(stdout);
        let (status, resp_headers) = read_cgi_head(&mut out).await?;
        // The decision lines are written before the client's answer ends (a `git push` that
        // returned is in the log), and even when the client goes away first.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(path) = decisions {
                if let Ok(text) = tokio::fs::read(&path).await {
                    let mut stdout = tokio::io::stdout();
                    let _ = stdout.write_all(&text).await;
                    let _ = stdout.flush().await;
                }
                let _ = tokio::fs::remove_file(&path).await;
            }
            drop(guard);
            let _ = done_tx.send(());
        });
        let done = futures_util::stream::once(async move {
            let _ = done_rx.await;
        })
        .filter_map(|()| async { None::<std::io::Result<Frame<Bytes>>> });
        let stream = tokio_util::io::ReaderStream::new(out)
            .map_ok(Frame::data)
            .chain(done);
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        *resp.status_mut() = status;
        for (k, v) in resp_headers {
            resp.headers_mut().append(k, v);
        }
        Ok(resp)
    }
}

/// A process-unique number for temp file names.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The CGI head git http-backend writes: `Status:` and the headers, up to the blank line.
async fn read_cgi_head(
    out: &mut BufReader<tokio::process::ChildStdout>,
) -> std::io::Result<(StatusCode, Vec<(header::HeaderName, header::HeaderValue)>)> {
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).await?;
        total += n;
        if n == 0 || total > server::MAX_HEAD_BYTES {
            return Err(std::io::Error::other(
                "git http-backend wrote no complete CGI head",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split(' ')
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.trim().as_bytes()),
            header::HeaderValue::from_str(v),
        ) {
            headers.push((k, v));
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    server::text(NAME, status, msg)
}

/// git-gate's line in the daemon table.
pub const DAEMON: crate::daemon::DaemonSpec = crate::daemon::DaemonSpec {
    name: NAME,
    about: "the agent's git remote: fetch from and push to the bottle's upstreams through a push policy",
    port: crate::ports::GIT_GATE,
    config_file: "git-gate.json",
    mcp_path: None,
    mounts: &[config::REPOS_MOUNT],
    files: config::key_mounts,
    enabled: |bottle| !bottle.git.is_empty(),
    config: |bottle, place| {
        Ok(config_file::to_json(
            NAME,
            &GitGateConfig::for_bottle(bottle, place),
        )?)
    },
    run: |config| Box::pin(run(config)),
};

/// Runs the daemon with the config at `path` until SIGTERM or SIGINT.
async fn run(path: PathBuf) -> Result<(), DaemonError> {
    use super::InDaemon;
    let config = GitGateConfig::load(&path).in_daemon(NAME)?;
    let listen = config.listen;
    let server = Server::new(config, &path).in_daemon(NAME)?;
    let (listener, stop) = server::listen(listen, LISTENING).await.in_daemon(NAME)?;
    server.serve(listener, stop).await;
    Ok(())
}

/// The URL of each of `bottle`'s gate repositories for a git client where `endpoints` (daemon
/// name → address) are reachable: the host's published port, or the guest's relay.
pub fn remotes(
    bottle: &crate::manifest::Bottle,
    endpoints: &std::collections::BTreeMap<String, SocketAddr>,
) -> std::collections::BTreeMap<String, String> {
    let Some(addr) = endpoints.get(DAEMON.name) else {
        return Default::default();
    };
    bottle
        .git
        .iter()
        .map(|r| (r.name.clone(), repo_url(*addr, &r.name)))
        .collect()
}

/// The smart-HTTP URL of gate repository `name` at `addr`.
pub fn repo_url(addr: SocketAddr, name: &str) -> String {
    format!("http://{addr}/{name}.git")
}

/// `krbottle bundle git-hook`: the pre-receive hook ([`hook::run`]); its exit status.
pub fn run_hook(config: &Path, repo: &str) -> Result<u8, hook::HookError> {
    hook::run(config, repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_smart_http_paths_of_valid_names_are_routed() {
        let up = Some("service=git-upload-pack");
        let rp = Some("service=git-receive-pack");
        type Case<'a> = (&'a str, Option<&'a str>, Option<(&'a str, Service)>);
        let cases: &[Case] = &[
            (
                "/app.git/info/refs",
                up,
                Some(("app", Service::Advertise { push: false })),
            ),
            (
                "/app/info/refs",
                rp,
                Some(("app", Service::Advertise { push: true })),
            ),
            (
                "/app.git/git-upload-pack",
                None,
                Some(("app", Service::UploadPack)),
            ),
            (
                "/app.git/git-receive-pack",
                None,
                Some(("app", Service::ReceivePack)),
            ),
            (
                "/app.git//git-receive-pack",
                None,
                Some(("app", Service::ReceivePack)),
            ),
            ("/app.git/info/refs", None, None),
            (
                "/app.git/info/refs",
                Some("service=git-upload-archive"),
                None,
            ),
            ("/app.git/HEAD", None, None),
            ("/app.git/objects/info/packs", None, None),
            ("/../app.git/info/refs", up, None),
            ("/app.git/../../etc/info/refs", up, None),
            ("//etc/passwd/info/refs", up, None),
            ("/run/krbottle/git-keys/app/identity/info/refs", up, None),
            ("/%2e%2e/info/refs", up, None),
            ("/a/b.git/info/refs", up, None),
            ("/App.git/info/refs", up, None),
        ];
        for (path, query, want) in cases {
            assert_eq!(route(path, *query), *want, "{path} {query:?}");
        }
    }
}
