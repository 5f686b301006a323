//! `krbottle.toml`: the agents and bottles a project declares, parsed and validated once.
//!
//! Parsing keeps toml's byte spans so that every error names the file, the line and the key.
//! The validated [`Manifest`] only holds canonical values: hosts through `Host::parse`, rules
//! through `AllowRule::parse` (`host[:port]`), names checked for use in Docker names and labels. Tokens are
//! never in the manifest: a route names the host environment variable that holds its token.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::net::host::{Host, HostError};
use crate::net::policy::{AllowRule, parse_route_host, route_host_string};
use crate::refs::{PushRules, RefPattern};
use crate::resources::{DEFAULT_CPUS, DEFAULT_MEMORY_MIB, MAX_CPUS, MIN_MEMORY_MIB};

/// The manifest's file name in a project directory.
pub const MANIFEST_FILE: &str = "krbottle.toml";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("Cannot read manifest {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    Validate {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// A validated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub path: PathBuf,
    pub agents: BTreeMap<String, Agent>,
    pub bottles: BTreeMap<String, Bottle>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub image: ImageSource,
    /// The command to run in the guest; empty means the image's own entrypoint and command.
    pub command: Vec<String>,
    /// A prompt file (resolved against the manifest's directory).
    pub prompt: Option<PathBuf>,
    /// Skill directories (resolved against the manifest's directory).
    pub skills: Vec<PathBuf>,
    /// The bottle the agent runs in (a key of [`Manifest::bottles`]).
    pub bottle: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A Docker image reference.
    Image(String),
    /// A Dockerfile, relative to the manifest's directory; its directory is the build context.
    Dockerfile(PathBuf),
    /// A `docker save` archive, relative to the manifest's directory: no Docker engine needed
    /// for the image (machines without one, the emulated-hypervisor harness).
    Archive(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bottle {
    pub name: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub env: BTreeMap<String, String>,
    /// Hosts reachable through the gateway without interception (route hosts come on top),
    /// each bound to a port (443 for CONNECT and 80 for plain HTTP unless `host:port`).
    pub allow: Vec<AllowRule>,
    pub routes: Vec<Route>,
    /// git's `user.name` and `user.email` in the guest.
    pub git_user: Option<GitUser>,
    /// Fixed addresses the gateway uses for these names, with no DNS lookup (like curl's
    /// `--resolve`): an internal mirror, a test upstream. Keys are canonical host names.
    pub resolve: BTreeMap<String, std::net::IpAddr>,
    /// Extra CA certificates (PEM, a host path) the gateway trusts for upstreams, besides the
    /// public roots: a corporate TLS proxy, a test upstream.
    pub upstream_ca_file: Option<PathBuf>,
    /// The approval queue (`supervise = true` or a `[bottles.NAME.supervise]` table); `None`
    /// when the bottle has none.
    pub supervise: Option<Supervise>,
    /// The upstream repositories git-gate serves (`[[bottles.NAME.git]]`), by name.
    pub git: Vec<GitRepo>,
}

/// One upstream repository behind git-gate: the agent fetches and pushes at the gate, which
/// alone holds the key and decides what may go upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRepo {
    /// The repository's name at the gate (`http://127.0.0.1:<GIT_GATE>/NAME.git`).
    pub name: String,
    /// The SSH upstream.
    pub upstream: GitUpstream,
    /// The SSH private key (a host path), mounted read-only into the bundle only.
    pub identity_file: PathBuf,
    /// The upstream's host keys (a host path); checked strictly, never learnt.
    pub known_hosts: PathBuf,
    /// What the agent may push.
    pub rules: PushRules,
    /// The largest push (what git sends: the pack), in MiB.
    pub max_push_mib: u32,
    /// The gate fetches from upstream before serving a fetch at most this often.
    pub fetch_interval_secs: u32,
}

impl GitRepo {
    pub const MAX_PUSH_MIB: std::ops::RangeInclusive<u32> = 1..=16 * 1024;
    pub const DEFAULT_MAX_PUSH_MIB: u32 = 100;
    pub const DEFAULT_FETCH_INTERVAL_SECS: u32 = 5;
}

/// An SSH git URL, as written (`git@host:org/app.git` or `ssh://git@host:2222/org/app.git`),
/// with its parts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GitUpstream {
    /// The URL as the manifest gives it (what git is told).
    pub url: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The path, without a leading `/` and as written (with or without `.git`).
    pub path: String,
    /// Whether it was written scp-like (`host:path`).
    pub scp_like: bool,
}

impl GitUpstream {
    /// Parses an SSH URL: `ssh://[user@]host[:port]/path` or scp-like `[user@]host:path`.
    pub fn parse(url: &str) -> Result<GitUpstream, String> {
        if url.is_empty() || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(
                "must be an SSH URL without spaces, e.g. git@host.example:org/app.git".into(),
            );
        }
        let (authority, path, scp_like) = if let Some(rest) = url.strip_prefix("ssh://") {
            let (authority, path) = rest
                .split_once('/')
                .ok_or("an ssh:// URL needs a path, e.g. ssh://git@host/org/app.git")?;
            (authority, path, false)
        } else if url.contains("://") {
            return Err(format!(
                "{url} is not an SSH URL; git-gate pushes over SSH only (`git@host:org/app.git` or `ssh://…`)"
            ));
        } else {
            match url.split_once(':') {
                Some((authority, path)) if !authority.contains('/') => (authority, path, true),
                _ => {
                    return Err(format!(
                        "{url} is not an SSH URL; git-gate pushes over SSH only (`git@host:org/app.git` or `ssh://…`)"
                    ));
                }
            }
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err("the user before `@` is empty".into()),
            None => (None, authority),
        };
        let port_of = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or(format!("port {p:?} is not a TCP port"))
        };
        let (host, port) = if scp_like {
            (hostport, None)
        } else if let Some(v6) = hostport.strip_prefix('[') {
            let (h, rest) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing `]`")?;
            match rest.strip_prefix(':') {
                Some(p) => (h, Some(port_of(p)?)),
                None if rest.is_empty() => (h, None),
                None => return Err("only `:PORT` may follow an IPv6 host".into()),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(port_of(p)?)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.starts_with('-') {
            return Err("the host is missing or starts with `-`".into());
        }
        if user.as_deref().is_some_and(|u| u.starts_with('-')) {
            return Err("the user starts with `-`".into());
        }
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.starts_with('-') {
            return Err("the repository path is missing or starts with `-`".into());
        }
        Ok(GitUpstream {
            url: url.to_string(),
            user,
            host: host.to_string(),
            port,
            path: path.to_string(),
            scp_like,
        })
    }

    /// Every way of writing this URL that a user may clone: scp-like and `ssh://`, with and
    /// without `.git` (and with the default port spelt out), for git's `insteadOf`.
    pub fn forms(&self) -> Vec<String> {
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let bare = self.path.strip_suffix(".git").unwrap_or(&self.path);
        let mut out = Vec::new();
        for path in [format!("{bare}.git"), bare.to_string()] {
            match self.port {
                None | Some(22) => {
                    out.push(format!("{user}{host}:{path}"));
                    out.push(format!("ssh://{user}{host}/{path}"));
                    out.push(format!("ssh://{user}{host}:22/{path}"));
                }
                Some(port) => out.push(format!("ssh://{user}{host}:{port}/{path}")),
            }
        }
        out
    }
}

/// The supervise daemon's settings for one bottle: its MCP tools wait for a human's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Supervise {
    /// How long one tool call waits for a decision before it answers `pending`. Claude Code
    /// drops an HTTP tool call after about 5 minutes, so this stays below that.
    pub wait_secs: u32,
    /// How long a request can be answered; after that it is expired.
    pub expire_secs: u64,
    /// How many requests may wait for an answer at once.
    pub max_pending: u32,
    /// The largest MCP request body the daemon reads.
    pub max_request_bytes: u32,
}

impl Supervise {
    pub const WAIT_SECS: std::ops::RangeInclusive<u32> = 1..=290;
    pub const EXPIRE_SECS: std::ops::RangeInclusive<u64> = 1..=30 * 24 * 3600;
    pub const MAX_PENDING: std::ops::RangeInclusive<u32> = 1..=1000;
    pub const MAX_REQUEST_BYTES: std::ops::RangeInclusive<u32> = 4096..=4 * 1024 * 1024;
}

impl Default for Supervise {
    fn default() -> Self {
        Supervise {
            wait_secs: 240,
            expire_secs: 24 * 3600,
            max_pending: 8,
            max_request_bytes: 256 * 1024,
        }
    }
}

/// git's identity in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitUser {
    pub name: String,
    pub email: String,
}

/// A host whose requests the gateway intercepts to inject a token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// Canonical domain name, with `:port` when the route is not on 443.
    pub host: String,
    /// Lowercase header name to set, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Optional scheme put before the token, e.g. `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Name of the host environment variable holding the real token.
    pub token_env: String,
    /// Lowercase names of headers the gateway drops from the client's requests on this route,
    /// on top of every credential-shaped one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_headers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    agents: BTreeMap<Spanned<String>, Spanned<RawAgent>>,
    #[serde(default)]
    bottles: BTreeMap<Spanned<String>, Spanned<RawBottle>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    image: Option<Spanned<String>>,
    dockerfile: Option<Spanned<String>>,
    image_archive: Option<Spanned<String>>,
    #[serde(default)]
    command: Vec<String>,
    prompt: Option<Spanned<String>>,
    #[serde(default)]
    skills: Vec<Spanned<String>>,
    bottle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBottle {
    cpus: Option<Spanned<u8>>,
    memory_mib: Option<Spanned<u32>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    git_user: Option<Spanned<RawGitUser>>,
    #[serde(default)]
    resolve: BTreeMap<Spanned<String>, Spanned<String>>,
    upstream_ca_file: Option<Spanned<String>>,
    supervise: Option<Spanned<RawSupervise>>,
    #[serde(default)]
    git: Vec<Spanned<RawGitRepo>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitRepo {
    name: Spanned<String>,
    upstream: Spanned<String>,
    identity_file: Spanned<String>,
    known_hosts: Spanned<String>,
    #[serde(default)]
    push: Vec<Spanned<String>>,
    #[serde(default)]
    protected: Vec<Spanned<String>>,
    allow_force: Option<bool>,
    allow_delete: Option<bool>,
    max_push_mib: Option<Spanned<u32>>,
    fetch_interval_secs: Option<Spanned<u32>>,
}

/// `supervise = true|false`, or a table of settings (which turns it on).
enum RawSupervise {
    Switch(bool),
    Table(RawSuperviseTable),
}

impl<'de> Deserialize<'de> for RawSupervise {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSupervise;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a table of supervise settings")
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawSupervise, E> {
                Ok(RawSupervise::Switch(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSupervise, A::Error> {
                // Through the map itself, so the table's values keep their spans.
                let d = serde::de::value::MapAccessDeserializer::new(map);
                RawSuperviseTable::deserialize(d).map(RawSupervise::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuperviseTable {
    wait_secs: Option<Spanned<u32>>,
    expire_secs: Option<Spanned<u64>>,
    max_pending: Option<Spanned<u32>>,
    max_request_bytes: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitUser {
    name: String,
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Spanned<String>,
    header: Spanned<String>,
    scheme: Option<Spanned<String>>,
    token_env: Spanned<String>,
    #[serde(default)]
    drop_headers: Vec<Spanned<String>>,
}

/// Headers a route may not set: they frame the message or address the hop.
const FORBIDDEN_ROUTE_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
];

impl Manifest {
    /// The manifest of the directory `dir` or its nearest parent that has one (as cargo finds
    /// `Cargo.toml`).
    pub fn find_upward(dir: &Path) -> Option<PathBuf> {
        dir.ancestors()
            .map(|d| d.join(MANIFEST_FILE))
            .find(|p| p.is_file())
    }

    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// Validates manifest text; `path` is only used in error messages and for relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let v = Validator { path, text };
        let mut bottles = BTreeMap::new();
        for (name, bottle) in raw.bottles {
            let b = v.bottle(&name, bottle.into_inner())?;
            bottles.insert(b.name.clone(), b);
        }
        let mut agents = BTreeMap::new();
        for (name, agent) in raw.agents {
            let a = v.agent(&name, agent, &bottles)?;
            agents.insert(a.name.clone(), a);
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            agents,
            bottles,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    /// A path of the manifest, relative to its directory unless absolute.
    fn relative(&self, p: &str) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        dir.join(p)
    }

    fn err(&self, span: Range<usize>, key: String, message: impl Into<String>) -> ManifestError {
        ManifestError::Validate {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key,
            message: message.into(),
        }
    }

    fn name(&self, name: &Spanned<String>, table: &str) -> Result<String, ManifestError> {
        if !is_valid_name(name.get_ref()) {
            return Err(self.err(
                name.span(),
                format!("{table}.{}", name.get_ref()),
                "names are 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit",
            ));
        }
        Ok(name.get_ref().clone())
    }

    fn bottle(&self, name: &Spanned<String>, raw: RawBottle) -> Result<Bottle, ManifestError> {
        let name = self.name(name, "bottles")?;
        let key = |k: &str| format!("bottles.{name}.{k}");
        let cpus = match raw.cpus {
            Some(c) if !(1..=MAX_CPUS).contains(c.get_ref()) => {
                return Err(self.err(c.span(), key("cpus"), format!("must be 1 to {MAX_CPUS}")));
            }
            Some(c) => c.into_inner(),
            None => DEFAULT_CPUS,
        };
        let memory_mib = match raw.memory_mib {
            Some(m) if *m.get_ref() < MIN_MEMORY_MIB => {
                return Err(self.err(
                    m.span(),
                    key("memory_mib"),
                    format!("must be at least {MIN_MEMORY_MIB}"),
                ));
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MEMORY_MIB,
        };
        let mut env = BTreeMap::new();
        for (k, val) in raw.env {
            if !is_valid_env_name(k.get_ref()) {
                return Err(self.err(
                    k.span(),
                    key(&format!("env.{}", k.get_ref())),
                    "environment variable names are letters, digits and `_`, not starting with a digit",
                ));
            }
            if val.get_ref().contains('\0') {
                return Err(self.err(
                    val.span(),
                    key(&format!("env.{}", k.get_ref())),
                    "values cannot contain NUL",
                ));
            }
            env.insert(k.into_inner(), val.into_inner());
        }
        let mut allow = Vec::new();
        for (i, rule) in raw.allow.iter().enumerate() {
            let parsed = AllowRule::parse(rule.get_ref())
                .map_err(|e| self.err(rule.span(), key(&format!("allow[{i}]")), e.to_string()))?;
            if allow.contains(&parsed) {
                return Err(self.err(
                    rule.span(),
                    key(&format!("allow[{i}]")),
                    format!("{parsed} is listed twice"),
                ));
            }
            allow.push(parsed);
        }
        let mut routes: Vec<Route> = Vec::new();
        for (i, route) in raw.routes.into_iter().enumerate() {
            let host_span = route.get_ref().host.span();
            let r = self.route(&key(&format!("routes[{i}]")), route.into_inner())?;
            let domain = |h: &str| parse_route_host(h).map(|(d, _)| d).ok();
            if routes.iter().any(|o| domain(&o.host) == domain(&r.host)) {
                return Err(self.err(
                    host_span,
                    key(&format!("routes[{i}].host")),
                    format!("{} already has a route", r.host),
                ));
            }
            routes.push(r);
        }
        let git_user = match raw.git_user {
            Some(g) => {
                let span = g.span();
                let g = g.into_inner();
                let ok = |v: &str| !v.trim().is_empty() && !v.contains(['\n', '\r', '\0']);
                if !ok(&g.name) || !ok(&g.email) {
                    return Err(self.err(
                        span,
                        key("git_user"),
                        "`name` and `email` must be one non-empty line each",
                    ));
                }
                Some(GitUser {
                    name: g.name,
                    email: g.email,
                })
            }
            None => None,
        };
        let mut resolve = BTreeMap::new();
        for (host, ip) in raw.resolve {
            let k = key(&format!("resolve.{}", host.get_ref()));
            let canonical = Host::parse(host.get_ref())
                .map_err(|e| self.err(host.span(), k.clone(), e.to_string()))?;
            let addr = ip.get_ref().parse::<std::net::IpAddr>().map_err(|_| {
                self.err(
                    ip.span(),
                    k.clone(),
                    "must be an IP address, e.g. \"10.0.0.5\"",
                )
            })?;
            resolve.insert(canonical.to_string(), addr);
        }
        let upstream_ca_file = raw.upstream_ca_file.map(|f| self.relative(f.get_ref()));
        let supervise = match raw.supervise.map(Spanned::into_inner) {
            None | Some(RawSupervise::Switch(false)) => None,
            Some(RawSupervise::Switch(true)) => Some(Supervise::default()),
            Some(RawSupervise::Table(t)) => Some(self.supervise(&key("supervise"), t)?),
        };
        let mut git: Vec<GitRepo> = Vec::new();
        for (i, repo) in raw.git.into_iter().enumerate() {
            let name_span = repo.get_ref().name.span();
            let r = self.git_repo(&key(&format!("git[{i}]")), repo.into_inner())?;
            if git.iter().any(|o| o.name == r.name) {
                return Err(self.err(
                    name_span,
                    key(&format!("git[{i}].name")),
                    format!(
                        "{} is the name of another repository of this bottle",
                        r.name
                    ),
                ));
            }
            git.push(r);
        }
        Ok(Bottle {
            name,
            cpus,
            memory_mib,
            env,
            allow,
            routes,
            git_user,
            resolve,
            upstream_ca_file,
            supervise,
            git,
        })
    }

    /// A host path of the manifest: `~/` is the home directory, a relative path is relative to
    /// the manifest's directory. It must be a readable file.
    fn host_file(&self, value: &Spanned<String>, key: String) -> Result<PathBuf, ManifestError> {
        let raw = value.get_ref();
        let path = match raw.strip_prefix("~/") {
            Some(rest) => dirs::home_dir().unwrap_or_default().join(rest),
            None => self.relative(raw),
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(self.err(
                value.span(),
                key,
                format!("{} is not a file", path.display()),
            )),
            Err(e) => Err(self.err(
                value.span(),
                key,
                format!(
                    "cannot read {}: {e}; give the path of an existing file",
                    path.display()
                ),
            )),
        }
    }

    fn git_repo(&self, key: &str, raw: RawGitRepo) -> Result<GitRepo, ManifestError> {
        let name = raw.name.get_ref();
        if !is_valid_name(name) {
            return Err(self.err(
                raw.name.span(),
                format!("{key}.name"),
                "names are 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit",
            ));
        }
        let upstream = GitUpstream::parse(raw.upstream.get_ref())
            .map_err(|e| self.err(raw.upstream.span(), format!("{key}.upstream"), e))?;
        let identity_file = self.host_file(&raw.identity_file, format!("{key}.identity_file"))?;
        let known_hosts = self.host_file(&raw.known_hosts, format!("{key}.known_hosts"))?;
        let patterns = |list: &[Spanned<String>], field: &str| {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    RefPattern::parse(p.get_ref()).map_err(|e| {
                        self.err(p.span(), format!("{key}.{field}[{i}]"), e.to_string())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let push = patterns(&raw.push, "push")?;
        let protected = patterns(&raw.protected, "protected")?;
        let max_push_mib = match raw.max_push_mib {
            Some(m) if !GitRepo::MAX_PUSH_MIB.contains(m.get_ref()) => {
                return Err(self.err(
                    m.span(),
                    format!("{key}.max_push_mib"),
                    format!(
                        "must be {} to {}",
                        GitRepo::MAX_PUSH_MIB.start(),
                        GitRepo::MAX_PUSH_MIB.end()
                    ),
                ));
            }
            Some(m) => m.into_inner(),
            None => GitRepo::DEFAULT_MAX_PUSH_MIB,
        };
        let fetch_interval_secs = match raw.fetch_interval_secs {
            Some(f) if *f.get_ref() > 3600 => {
                return Err(self.err(
                    f.span(),
                    format!("{key}.fetch_interval_secs"),
                    "must be 0 to 3600",
                ));
            }
            Some(f) => f.into_inner(),
            None => GitRepo::DEFAULT_FETCH_INTERVAL_SECS,
        };
        Ok(GitRepo {
            name: name.clone(),
            upstream,
            identity_file,
            known_hosts,
            rules: PushRules {
                push,
                protected,
                allow_force: raw.allow_force.unwrap_or(false),
                allow_delete: raw.allow_delete.unwrap_or(false),
            },
            max_push_mib,
            fetch_interval_secs,
        })
    }

    fn supervise(&self, key: &str, raw: RawSuperviseTable) -> Result<Supervise, ManifestError> {
        fn within<T: PartialOrd + Copy + std::fmt::Display>(
            v: &Validator<'_>,
            value: Option<Spanned<T>>,
            key: String,
            range: std::ops::RangeInclusive<T>,
            why: &str,
            default: T,
        ) -> Result<T, ManifestError> {
            match value {
                Some(x) if !range.contains(x.get_ref()) => Err(v.err(
                    x.span(),
                    key,
                    format!("must be {} to {}{why}", range.start(), range.end()),
                )),
                Some(x) => Ok(x.into_inner()),
                None => Ok(default),
            }
        }
        let d = Supervise::default();
        Ok(Supervise {
            wait_secs: within(
                self,
                raw.wait_secs,
                format!("{key}.wait_secs"),
                Supervise::WAIT_SECS,
                " (Claude Code drops a tool call after about 5 minutes)",
                d.wait_secs,
            )?,
            expire_secs: within(
                self,
                raw.expire_secs,
                format!("{key}.expire_secs"),
                Supervise::EXPIRE_SECS,
                "",
                d.expire_secs,
            )?,
            max_pending: within(
                self,
                raw.max_pending,
                format!("{key}.max_pending"),
                Supervise::MAX_PENDING,
                "",
                d.max_pending,
            )?,
            max_request_bytes: within(
                self,
                raw.max_request_bytes,
                format!("{key}.max_request_bytes"),
                Supervise::MAX_REQUEST_BYTES,
                "",
                d.max_request_bytes,
            )?,
        })
    }

    fn route(&self, key: &str, raw: RawRoute) -> Result<Route, ManifestError> {
        let host = match parse_route_host(raw.host.get_ref()) {
            Ok((domain, port)) => route_host_string(&domain, port),
            Err(HostError::InvalidDomain(_))
                if crate::net::host::split_port(raw.host.get_ref())
                    .is_ok_and(|(h, _)| matches!(Host::parse(h), Ok(Host::Ip(_)))) =>
            {
                return Err(self.err(
                    raw.host.span(),
                    format!("{key}.host"),
                    "a route needs a domain name: its token is sent over TLS verified for that name",
                ));
            }
            Err(e) => return Err(self.err(raw.host.span(), format!("{key}.host"), e.to_string())),
        };
        let header = raw.header.get_ref().to_ascii_lowercase();
        if http::HeaderName::from_bytes(header.as_bytes()).is_err()
            || FORBIDDEN_ROUTE_HEADERS.contains(&header.as_str())
        {
            return Err(self.err(
                raw.header.span(),
                format!("{key}.header"),
                "must be a valid header name such as `authorization` or `x-api-key`, not a hop or framing header",
            ));
        }
        let scheme = match raw.scheme {
            Some(s) if s.get_ref().is_empty() || !s.get_ref().bytes().all(is_token_byte) => {
                return Err(self.err(
                    s.span(),
                    format!("{key}.scheme"),
                    "must be one word such as `Bearer`",
                ));
            }
            Some(s) => Some(s.into_inner()),
            None => None,
        };
        if !is_valid_env_name(raw.token_env.get_ref()) {
            return Err(self.err(
                raw.token_env.span(),
                format!("{key}.token_env"),
                "must name an environment variable (letters, digits and `_`), not hold the token",
            ));
        }
        let mut drop_headers = Vec::new();
        for (i, name) in raw.drop_headers.iter().enumerate() {
            let lower = name.get_ref().to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(self.err(
                    name.span(),
                    format!("{key}.drop_headers[{i}]"),
                    "must be a header name such as `x-goog-user-project`",
                ));
            }
            if lower == header {
                return Err(self.err(
                    name.span(),
                    format!("{key}.drop_headers[{i}]"),
                    "is the route's own token header; it is always replaced, so leave it out",
                ));
            }
            drop_headers.push(lower);
        }
        Ok(Route {
            host,
            header,
            scheme,
            token_env: raw.token_env.into_inner(),
            drop_headers,
        })
    }

    fn agent(
        &self,
        name: &Spanned<String>,
        raw: Spanned<RawAgent>,
        bottles: &BTreeMap<String, Bottle>,
    ) -> Result<Agent, ManifestError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = self.name(name, "agents")?;
        let key = |k: &str| format!("agents.{name}.{k}");
        let given: Vec<(&str, Spanned<String>)> = [
            ("image", raw.image),
            ("dockerfile", raw.dockerfile),
            ("image_archive", raw.image_archive),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let image = match given.as_slice() {
            [] => {
                return Err(self.err(
                    span,
                    format!("agents.{name}"),
                    "needs one of `image`, `dockerfile` or `image_archive`",
                ));
            }
            [(k, first), _, ..] => {
                return Err(self.err(
                    first.span(),
                    key(k),
                    "give one of `image`, `dockerfile` or `image_archive`, not several",
                ));
            }
            [(k, v)] if v.get_ref().trim().is_empty() => {
                return Err(self.err(v.span(), key(k), "is empty"));
            }
            [("image", v)] => ImageSource::Image(v.get_ref().clone()),
            [("dockerfile", v)] => ImageSource::Dockerfile(self.relative(v.get_ref())),
            [(_, v)] => ImageSource::Archive(self.relative(v.get_ref())),
        };
        let bottle = match raw.bottle {
            Some(b) if bottles.contains_key(b.get_ref()) => b.into_inner(),
            Some(b) => {
                let known: BTreeSet<_> = bottles.keys().collect();
                return Err(self.err(
                    b.span(),
                    key("bottle"),
                    format!(
                        "no bottle {:?} in this manifest (known: {known:?})",
                        b.get_ref()
                    ),
                ));
            }
            None if bottles.len() == 1 => bottles.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(self.err(
                    span,
                    key("bottle"),
                    "name the bottle this agent runs in (there is not exactly one)",
                ));
            }
        };
        Ok(Agent {
            name,
            image,
            command: raw.command,
            prompt: raw.prompt.map(|p| self.relative(p.get_ref())),
            skills: raw
                .skills
                .iter()
                .map(|s| self.relative(s.get_ref()))
                .collect(),
            bottle,
        })
    }
}

/// Whether `s` is a valid agent or bottle name (also used for state dirs and Docker objects).
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// An environment variable name as POSIX shells accept it.
pub fn is_valid_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agents.claude]
image = "krbottle/claude:latest"
command = ["claude"]
prompt = "prompt.md"
skills = ["skills/review"]
bottle = "dev"

[bottles.dev]
cpus = 4
memory_mib = 4096
env = { EDITOR = "vi" }
allow = ["GitHub.com.", "*.githubusercontent.com", "Git.Example.com:8443"]

[[bottles.dev.routes]]
host = "api.anthropic.com"
header = "X-Api-Key"
token_env = "ANTHROPIC_API_KEY"

[[bottles.dev.routes]]
host = "api.openai.com"
header = "authorization"
scheme = "Bearer"
token_env = "OPENAI_API_KEY"
drop_headers = ["OpenAI-Organization", "openai-project"]

[[bottles.dev.routes]]
host = "Gitlab.example.com:8443"
header = "private-token"
token_env = "GITLAB_TOKEN"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("krbottle.toml"), text)
    }

    #[test]
    fn good_manifest_is_canonical() {
        let m = parse(GOOD).unwrap();
        let dev = &m.bottles["dev"];
        assert_eq!(dev.cpus, 4);
        assert_eq!(dev.memory_mib, 4096);
        assert_eq!(dev.env["EDITOR"], "vi");
        assert_eq!(
            dev.allow,
            vec![
                AllowRule::parse("github.com").unwrap(),
                AllowRule::parse("*.githubusercontent.com").unwrap(),
                AllowRule::parse("git.example.com:8443").unwrap(),
            ]
        );
        assert_eq!(dev.routes[0].header, "x-api-key");
        assert_eq!(dev.routes[1].scheme.as_deref(), Some("Bearer"));
        assert_eq!(
            dev.routes[1].drop_headers,
            vec!["openai-organization", "openai-project"]
        );
        assert!(dev.routes[0].drop_headers.is_empty());
        assert_eq!(dev.routes[2].host, "gitlab.example.com:8443");
        let claude = &m.agents["claude"];
        assert_eq!(
            claude.image,
            ImageSource::Image("krbottle/claude:latest".into())
        );
        assert_eq!(claude.bottle, "dev");
    }

    #[test]
    fn the_shipped_example_manifest_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/krbottle.toml");
        let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let agent = &m.agents["example"];
        assert_eq!(agent.bottle, "example");
        assert_eq!(
            m.bottles["example"].routes[0].token_env,
            "ANTHROPIC_API_KEY"
        );
    }

    #[test]
    fn supervise_is_a_switch_or_a_table_of_settings() {
        let cases: &[(&str, Option<Supervise>)] = &[
            ("[bottles.b]\n", None),
            ("[bottles.b]\nsupervise = false\n", None),
            (
                "[bottles.b]\nsupervise = true\n",
                Some(Supervise::default()),
            ),
            ("[bottles.b.supervise]\n", Some(Supervise::default())),
            (
                "[bottles.b.supervise]\nwait_secs = 5\nexpire_secs = 60\nmax_pending = 2\nmax_request_bytes = 8192\n",
                Some(Supervise {
                    wait_secs: 5,
                    expire_secs: 60,
                    max_pending: 2,
                    max_request_bytes: 8192,
                }),
            ),
            (
                "[bottles.b]\nsupervise = { max_pending = 3 }\n",
                Some(Supervise {
                    max_pending: 3,
                    ..Supervise::default()
                }),
            ),
        ];
        for (text, want) in cases {
            let m = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(&m.bottles["b"].supervise, want, "{text:?}");
        }
    }

    #[test]
    fn single_bottle_is_the_default() {
        let m = parse("[agents.a]\ndockerfile = \"Dockerfile\"\n[bottles.only]\n").unwrap();
        assert_eq!(m.agents["a"].bottle, "only");
        assert_eq!(m.bottles["only"].cpus, DEFAULT_CPUS);
    }

    /// Each bad manifest must fail on the given line, naming the given key.
    #[test]
    fn errors_name_line_and_key() {
        let cases: &[(&str, usize, &str)] = &[
            ("[bottles.b]\ncpus = 0\n", 2, "bottles.b.cpus"),
            (
                "[bottles.b]\nallow = [\n  \"ok.com\",\n  \"a.*.com\",\n]\n",
                4,
                "bottles.b.allow[1]",
            ),
            (
                "[bottles.b]\nallow = [\"127.1\", \"127.0.0.1\"]\n",
                2,
                "bottles.b.allow[1]",
            ),
            (
                "[bottles.b]\nallow = [\"allowed.com@evil.test\"]\n",
                2,
                "bottles.b.allow[0]",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"10.0.0.1\"\nheader = \"authorization\"\ntoken_env = \"T\"\n",
                3,
                "bottles.b.routes[0].host",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com\"\nheader = \"Host\"\ntoken_env = \"T\"\n",
                4,
                "bottles.b.routes[0].header",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com\"\nheader = \"x-api-key\"\ntoken_env = \"sk-live-123\"\n",
                5,
                "bottles.b.routes[0].token_env",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com\"\nheader = \"x-api-key\"\ntoken_env = \"T\"\n[[bottles.b.routes]]\nhost = \"A.com.\"\nheader = \"x-api-key\"\ntoken_env = \"U\"\n",
                7,
                "bottles.b.routes[1].host",
            ),
            (
                "[bottles.b]\nenv = { 1BAD = \"x\" }\n",
                2,
                "bottles.b.env.1BAD",
            ),
            ("[bottles.B]\n", 1, "bottles.B"),
            (
                "[agents.a]\nimage = \"x\"\ndockerfile = \"y\"\n[bottles.b]\n",
                2,
                "agents.a.image",
            ),
            (
                "[agents.a]\ndockerfile = \"x\"\nimage_archive = \"y\"\n[bottles.b]\n",
                2,
                "agents.a.dockerfile",
            ),
            (
                "[bottles.b]\nresolve = { \"a.com\" = \"not-an-ip\" }\n",
                2,
                "bottles.b.resolve.a.com",
            ),
            (
                "[bottles.b]\ngit_user = { name = \"a\\nb\", email = \"e\" }\n",
                2,
                "bottles.b.git_user",
            ),
            (
                "[agents.a]\nimage = \"x\"\nbottle = \"nope\"\n[bottles.b]\n",
                3,
                "agents.a.bottle",
            ),
            ("[agents.a]\nimage = \"x\"\n", 1, "agents.a.bottle"),
            (
                "[bottles.b.supervise]\nwait_secs = 300\n",
                2,
                "bottles.b.supervise.wait_secs",
            ),
            (
                "[bottles.b.supervise]\nwait_secs = 10\nmax_pending = 0\n",
                3,
                "bottles.b.supervise.max_pending",
            ),
            (
                "[bottles.b.supervise]\nexpire_secs = 0\n",
                2,
                "bottles.b.supervise.expire_secs",
            ),
            (
                "[bottles.b]\nsupervise = { max_request_bytes = 10 }\n",
                2,
                "bottles.b.supervise.max_request_bytes",
            ),
            (
                "[bottles.b]\nallow = [\"ok.com\", \"a.com:0\"]\n",
                2,
                "bottles.b.allow[1]",
            ),
            (
                "[bottles.b]\nallow = [\"a.com:8443\", \"A.com.:8443\"]\n",
                2,
                "bottles.b.allow[1]",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"10.0.0.1:8443\"\nheader = \"authorization\"\ntoken_env = \"T\"\n",
                3,
                "bottles.b.routes[0].host",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com:99999\"\nheader = \"authorization\"\ntoken_env = \"T\"\n",
                3,
                "bottles.b.routes[0].host",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com\"\nheader = \"x-api-key\"\ntoken_env = \"T\"\ndrop_headers = [\"ok\", \"bad header\"]\n",
                6,
                "bottles.b.routes[0].drop_headers[1]",
            ),
            (
                "[bottles.b]\n[[bottles.b.routes]]\nhost = \"a.com\"\nheader = \"x-api-key\"\ntoken_env = \"T\"\ndrop_headers = [\"X-Api-Key\"]\n",
                6,
                "bottles.b.routes[0].drop_headers[0]",
            ),
        ];
        for (text, line, key) in cases {
            match parse(text) {
                Err(ManifestError::Validate {
                    line: l, key: k, ..
                }) => {
                    assert_eq!((l, k.as_str()), (*line, *key), "manifest {text:?}");
                }
                other => panic!("manifest {text:?}: expected a validation error, got {other:?}"),
            }
        }
    }

    /// A `[[bottles.b.git]]` table over real key files in `dir`, with `extra` lines.
    fn git_manifest(dir: &Path, upstream: &str, extra: &str) -> String {
        for f in ["id", "kh"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        format!(
            "[bottles.b]\n[[bottles.b.git]]\nname = \"app\"\nupstream = \"{upstream}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n{extra}",
            dir.join("id").display(),
            dir.join("kh").display()
        )
    }

    #[test]
    fn git_tables_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let m = parse(&git_manifest(
            dir.path(),
            "git@host.example:org/app.git",
            "push = [\"agent/*\"]\nprotected = [\"main\"]\nmax_push_mib = 5\n",
        ))
        .unwrap();
        let g = &m.bottles["b"].git[0];
        assert_eq!(g.name, "app");
        assert_eq!(g.upstream.host, "host.example");
        assert_eq!(g.upstream.user.as_deref(), Some("git"));
        assert_eq!(g.rules.push[0].as_str(), "refs/heads/agent/*");
        assert_eq!(
            (g.max_push_mib, g.rules.allow_force, g.rules.allow_delete),
            (5, false, false)
        );
        assert_eq!(g.fetch_interval_secs, GitRepo::DEFAULT_FETCH_INTERVAL_SECS);
        // Each bad value names its line and key.
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "https://host/org/app.git",
                "",
                4,
                "bottles.b.git[0].upstream",
            ),
            ("/srv/app.git", "", 4, "bottles.b.git[0].upstream"),
            ("file:///srv/app.git", "", 4, "bottles.b.git[0].upstream"),
            ("ssh://host", "", 4, "bottles.b.git[0].upstream"),
            ("ssh://host:0/x", "", 4, "bottles.b.git[0].upstream"),
            ("-oProxyCommand=x:app", "", 4, "bottles.b.git[0].upstream"),
            (
                "git@h:app",
                "push = [\"ok\", \"a..b\"]\n",
                7,
                "bottles.b.git[0].push[1]",
            ),
            (
                "git@h:app",
                "protected = [\"x.lock\"]\n",
                7,
                "bottles.b.git[0].protected[0]",
            ),
            (
                "git@h:app",
                "max_push_mib = 0\n",
                7,
                "bottles.b.git[0].max_push_mib",
            ),
            (
                "git@h:app",
                "[[bottles.b.git]]\nname = \"app\"\nupstream = \"git@h:x\"\nidentity_file = \"/nonexistent-krbottle-key\"\nknown_hosts = \"kh\"\n",
                10,
                "bottles.b.git[1].identity_file",
            ),
        ];
        for (upstream, extra, line, key) in cases {
            let text = git_manifest(dir.path(), upstream, extra);
            match parse(&text) {
                Err(ManifestError::Validate {
                    line: l, key: k, ..
                }) => {
                    assert_eq!((l, k.as_str()), (*line, *key), "{text}")
                }
                other => panic!("{text}: expected a validation error, got {other:?}"),
            }
        }
        let missing = git_manifest(dir.path(), "git@h:app", "").replace(
            &dir.path().join("kh").display().to_string(),
            "/nonexistent-krbottle-kh",
        );
        let e = parse(&missing).unwrap_err().to_string();
        assert!(e.contains("known_hosts") && e.contains(":6:"), "{e}");
        let dup = git_manifest(
            dir.path(),
            "git@h:app",
            &format!(
                "[[bottles.b.git]]\nname = \"app\"\nupstream = \"git@h:y\"\nidentity_file = \"{0}\"\nknown_hosts = \"{0}\"\n",
                dir.path().join("id").display()
            ),
        );
        let e = parse(&dup).unwrap_err().to_string();
        assert!(e.contains("bottles.b.git[1].name"), "{e}");
        let unknown = git_manifest(dir.path(), "git@h:app", "allow_push = true\n");
        assert!(matches!(
            parse(&unknown),
            Err(ManifestError::Parse { line: 7, .. })
        ));
    }

    #[test]
    fn upstream_urls_have_every_form() {
        let scp = GitUpstream::parse("git@host.example:org/app.git").unwrap();
        assert!(scp.scp_like);
        assert_eq!(
            scp.forms(),
            [
                "git@host.example:org/app.git",
                "ssh://git@host.example/org/app.git",
                "ssh://git@host.example:22/org/app.git",
                "git@host.example:org/app",
                "ssh://git@host.example/org/app",
                "ssh://git@host.example:22/org/app",
            ]
        );
        let ssh = GitUpstream::parse("ssh://u@[::1]:2222/srv/app").unwrap();
        assert_eq!(
            (ssh.host.as_str(), ssh.port, ssh.path.as_str()),
            ("::1", Some(2222), "srv/app")
        );
        assert_eq!(
            ssh.forms(),
            [
                "ssh://u@[::1]:2222/srv/app.git",
                "ssh://u@[::1]:2222/srv/app"
            ]
        );
        let plain = GitUpstream::parse("host:app").unwrap();
        assert_eq!((plain.user, plain.port), (None, None));
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("[bottles.b]\ncpus = \"two\"\n", 2, ""),
            ("[bottles.b]\n\nallowed = []\n", 3, "allowed"),
            ("[bottles.b\n", 1, ""),
            ("[bottles.b.supervise]\n\nwait = 5\n", 3, "wait"),
            (
                "[bottles.b]\nsupervise = \"yes\"\n",
                2,
                "true, false or a table",
            ),
        ];
        for (text, line, needle) in cases {
            match parse(text) {
                Err(e @ ManifestError::Parse { .. }) => {
                    let ManifestError::Parse { line: l, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(l, line, "manifest {text:?}: {e}");
                    assert!(e.to_string().contains(needle), "{e}");
                    assert!(e.to_string().starts_with("krbottle.toml:"), "{e}");
                }
                other => panic!("manifest {text:?}: expected a parse error, got {other:?}"),
            }
        }
    }
}
