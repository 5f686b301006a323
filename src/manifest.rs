//! `krbottle.toml`: the agents and bottles a project declares, parsed and validated once.
//!
//! Parsing keeps toml's byte spans so that every error names the file, the line and the key.
//! The validated [`Manifest`] only holds canonical values: hosts through [`Host::parse`], rules
//! through [`AllowRule::parse`] (`host[:port]`), names checked for use in Docker names and labels. Tokens are
//! never in the manifest: a route names the host environment variable that holds its token.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::net::host::{Host, HostError};
use crate::net::policy::{AllowRule, parse_route_host, route_host_string};

/// The manifest's file name in a project directory.
pub const MANIFEST_FILE: &str = "krbottle.toml";

const DEFAULT_CPUS: u8 = 2;
const DEFAULT_MEMORY_MIB: u32 = 2048;
const MIN_MEMORY_MIB: u32 = 256;
const MAX_CPUS: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {}", path.display())]
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
    /// A prompt file, relative to the manifest's directory.
    pub prompt: Option<PathBuf>,
    /// Skill directories, relative to the manifest's directory.
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
        Ok(Bottle {
            name,
            cpus,
            memory_mib,
            env,
            allow,
            routes,
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
        let image = match (raw.image, raw.dockerfile) {
            (Some(i), None) if !i.get_ref().trim().is_empty() => ImageSource::Image(i.into_inner()),
            (None, Some(d)) if !d.get_ref().is_empty() => {
                ImageSource::Dockerfile(PathBuf::from(d.into_inner()))
            }
            (Some(i), Some(_)) => {
                return Err(self.err(
                    i.span(),
                    key("image"),
                    "give `image` or `dockerfile`, not both",
                ));
            }
            (Some(i), None) => return Err(self.err(i.span(), key("image"), "is empty")),
            (None, Some(d)) => return Err(self.err(d.span(), key("dockerfile"), "is empty")),
            (None, None) => {
                return Err(self.err(
                    span,
                    format!("agents.{name}"),
                    "needs `image` or `dockerfile`",
                ));
            }
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
            prompt: raw.prompt.map(|p| PathBuf::from(p.into_inner())),
            skills: raw
                .skills
                .into_iter()
                .map(|s| PathBuf::from(s.into_inner()))
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
                "[agents.a]\nimage = \"x\"\nbottle = \"nope\"\n[bottles.b]\n",
                3,
                "agents.a.bottle",
            ),
            ("[agents.a]\nimage = \"x\"\n", 1, "agents.a.bottle"),
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

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("[bottles.b]\ncpus = \"two\"\n", 2, ""),
            ("[bottles.b]\n\nallowed = []\n", 3, "allowed"),
            ("[bottles.b\n", 1, ""),
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
