//! A bottle's plan: everything `start` decides before any side effect, as one value.
//!
//! [`plan`] is pure: the manifest's agent and bottle, the image's own config (USER, WORKDIR,
//! ENTRYPOINT/CMD, ENV) and its `/etc/passwd` and `/etc/group`, the bottle CA's certificate and
//! the agent's prompt and skills (read by the caller) become a [`BottlePlan`]: the image, the
//! resources, the guest's user, workdir, argv and environment, the guest-facing endpoints, the
//! files to provision with owner and mode, and the bundle's daemons. `--dry-run` prints it. No
//! secret is in it: tokens stay in the bundle, the guest gets placeholders.
//!
//! Where the guest finds the daemons is [`Reach`]: on Linux each daemon's own port
//! (`crate::ports`) on the guest's loopback, relayed by krbottle; on macOS, which has no
//! network namespace to relay from, the bundle's host ports, chosen before the bundle starts
//! and published on the host's loopback, dialled directly. Every address the guest is given (the
//! proxy, the MCP URLs, git's `insteadOf` rules) comes from the endpoints, so it is the same
//! port either way.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::daemon::DaemonSpec;
use crate::docker::ImageConfig;
use crate::manifest::{Agent, Bottle};
use crate::provision::{Content, ProvisionFile};
use crate::vm::config::EnvVar;

/// The merged trust bundle every TLS client in the guest is pointed at (Debian's location; it is
/// created when the image has none).
pub const TRUST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Other distributions' bundles, extended only when the image has them (Fedora, Alpine).
const OTHER_TRUST_BUNDLES: &[&str] = &["/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
/// The environment variables that name a CA file, set to [`TRUST_BUNDLE`].
const CA_FILE_VARS: &[&str] = &[
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];
/// What the guest gets for a route's credential variable: a value that is not the token (the
/// gateway drops whatever the client sends and injects the real one).
pub const PLACEHOLDER: &str = "krbottle-placeholder-the-gateway-injects-the-real-credential";

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "The image has no command (no ENTRYPOINT or CMD) and agent `{agent}` sets none: add `command` to it in the manifest, or give one after `--`"
    )]
    NoCommand { agent: String },
    #[error(
        "The image's USER `{user}` is not in its /etc/passwd; fix the image or use a numeric uid"
    )]
    UnknownUser { user: String },
    #[error("The image's USER group `{group}` is not in its /etc/group")]
    UnknownGroup { group: String },
    #[error("The image's WORKDIR `{0}` is not an absolute path")]
    Workdir(String),
    #[error("Skill {dir}: {why}")]
    Skill { dir: String, why: String },
    #[error(
        "The current directory {0} cannot be shared: its path must be absolute, UTF-8, without `:` or `,`"
    )]
    Cwd(String),
    #[error("No host port was chosen for the bundle's {daemon} daemon; this is a krbottle bug")]
    NoPublishedPort { daemon: String },
}

/// How the current directory reaches the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Cwd {
    /// Not at all.
    #[default]
    None,
    /// Shared read-write at the same path (virtio-fs), and it is the workdir.
    Share { path: PathBuf },
    /// Copied into the bottle's root at the same path before the first boot, and it is the
    /// workdir; the guest's changes stay in the bottle.
    Copy { path: PathBuf },
}

/// A skill directory's files, read by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skill {
    /// The directory, as the manifest names it (for messages).
    pub dir: String,
    /// `(path relative to the skill dir, contents)`, `SKILL.md` among them.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Everything [`plan`] starts from.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub name: &'a str,
    pub agent: &'a Agent,
    pub bottle: &'a Bottle,
    /// The image as the user named it, and its ID.
    pub image: &'a str,
    pub image_id: &'a str,
    pub image_config: &'a ImageConfig,
    /// The image's `/etc/passwd` and `/etc/group` (empty when absent).
    pub passwd: &'a str,
    pub group: &'a str,
    /// The bottle CA's certificate (PEM).
    pub ca_pem: &'a str,
    pub prompt: Option<&'a str>,
    pub skills: &'a [Skill],
    /// The command given after `--`, replacing the agent's and the image's.
    pub argv: &'a [String],
    pub cwd: &'a Cwd,
    /// The bundle's daemons for this bottle.
    pub daemons: &'a [&'static DaemonSpec],
    /// How the guest reaches them.
    pub reach: &'a Reach,
}

/// How the guest reaches the bundle's daemons.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "ports", rename_all = "snake_case")]
pub enum Reach {
    /// Each daemon's own port on the guest's `127.0.0.1`, relayed to the bundle (Linux).
    #[default]
    Relayed,
    /// The bundle's host ports, daemon name → port, published on the host's `127.0.0.1` and
    /// dialled by the guest directly (macOS: TSI opens the guest's sockets on the host).
    Published(BTreeMap<String, u16>),
}

impl Reach {
    /// The port the guest dials for `daemon`.
    fn port_of(&self, daemon: &DaemonSpec) -> Result<u16, PlanError> {
        match self {
            Reach::Relayed => Ok(daemon.port),
            Reach::Published(ports) => {
                ports
                    .get(daemon.name)
                    .copied()
                    .ok_or_else(|| PlanError::NoPublishedPort {
                        daemon: daemon.name.to_string(),
                    })
            }
        }
    }
}

/// The guest's user, as the image defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestUserPlan {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// A guest-facing endpoint: `127.0.0.1:guest_port` in the guest, relayed to a daemon, or (not
/// `relayed`) that daemon's published host port, dialled directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPlan {
    pub daemon: String,
    pub guest_port: u16,
    pub relayed: bool,
}

/// One provisioned file, as `--dry-run` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileView {
    pub path: String,
    pub owner: String,
    pub mode: String,
    pub how: &'static str,
    pub what: String,
}

/// The bottle's plan.
#[derive(Clone, Debug, Serialize)]
pub struct BottlePlan {
    pub name: String,
    pub agent: String,
    pub bottle: String,
    pub image: String,
    pub image_id: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub user: GuestUserPlan,
    pub workdir: String,
    pub argv: Vec<String>,
    /// In order; a later entry for a name replaces an earlier one.
    pub env: Vec<EnvVar>,
    pub endpoints: Vec<EndpointPlan>,
    pub cwd: Cwd,
    pub daemons: Vec<String>,
    /// What is written into the bottle's root before boot.
    #[serde(serialize_with = "serialize_files")]
    pub files: Vec<ProvisionFile>,
}

fn serialize_files<S: serde::Serializer>(files: &[ProvisionFile], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(files.iter().map(view))
}

/// How `--dry-run` shows a file: what and where, not its bytes.
pub fn view(f: &ProvisionFile) -> FileView {
    FileView {
        path: f.path.clone(),
        owner: format!("{}:{}", f.uid, f.gid),
        mode: format!("{:04o}", f.mode),
        how: match &f.content {
            Content::Text { .. } => "write",
            Content::Block { .. } if f.only_if_present => "extend if present",
            Content::Block { .. } => "extend",
            Content::JsonMerge { .. } => "merge JSON",
            Content::Tree { .. } => "copy once",
        },
        what: f.what.clone(),
    }
}

/// The plan as `--dry-run` prints it for a person.
pub fn describe(p: &BottlePlan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bottle {} (agent {}, bottle {})",
        p.name, p.agent, p.bottle
    );
    let _ = writeln!(out, "  image     {} ({})", p.image, p.image_id);
    let _ = writeln!(out, "  resources {} vCPUs, {} MiB", p.cpus, p.memory_mib);
    let _ = writeln!(
        out,
        "  user      {} ({}:{}), home {}",
        p.user.name, p.user.uid, p.user.gid, p.user.home
    );
    let _ = writeln!(out, "  workdir   {}", p.workdir);
    let _ = writeln!(out, "  argv      {:?}", p.argv);
    let _ = writeln!(out, "  daemons   {}", p.daemons.join(", "));
    for e in &p.endpoints {
        let how = if e.relayed {
            "relayed to"
        } else {
            "published by"
        };
        let _ = writeln!(
            out,
            "  endpoint  127.0.0.1:{} {how} {}",
            e.guest_port, e.daemon
        );
    }
    let _ = writeln!(out, "  env");
    for e in &p.env {
        let _ = writeln!(out, "    {}={}", e.name, e.value);
    }
    let _ = writeln!(out, "  files");
    for f in p.files.iter().map(view) {
        let _ = writeln!(
            out,
            "    {:<48} {} {} {:<18} {}",
            f.path, f.owner, f.mode, f.how, f.what
        );
    }
    out
}

/// Makes the plan.
pub fn plan(input: &PlanInput<'_>) -> Result<BottlePlan, PlanError> {
    let user = guest_user(&input.image_config.user, input.passwd, input.group)?;
    let cwd_path = match input.cwd {
        Cwd::None => None,
        Cwd::Share { path } | Cwd::Copy { path } => {
            let text = path
                .to_str()
                .filter(|p| p.starts_with('/') && !p.contains([':', ',', '\0']))
                .ok_or_else(|| PlanError::Cwd(path.display().to_string()))?;
            Some(text.to_string())
        }
    };
    let workdir = match (&cwd_path, input.image_config.working_dir.as_str()) {
        (Some(p), _) => p.clone(),
        (None, "") => "/".to_string(),
        (None, w) if w.starts_with('/') => w.to_string(),
        (None, w) => return Err(PlanError::Workdir(w.to_string())),
    };
    let argv = if !input.argv.is_empty() {
        input.argv.to_vec()
    } else if !input.agent.command.is_empty() {
        input.agent.command.clone()
    } else {
        let mut argv = input.image_config.entrypoint.clone();
        argv.extend(input.image_config.cmd.iter().cloned());
        argv
    };
    if argv.is_empty() {
        return Err(PlanError::NoCommand {
            agent: input.agent.name.clone(),
        });
    }
    let endpoints: Vec<EndpointPlan> = input
        .daemons
        .iter()
        .map(|d| {
            Ok(EndpointPlan {
                daemon: d.name.to_string(),
                guest_port: input.reach.port_of(d)?,
                relayed: matches!(input.reach, Reach::Relayed),
            })
        })
        .collect::<Result<_, PlanError>>()?;
    let env = guest_env(input, &user, &endpoints);
    let files = files(input, &user, &workdir, cwd_path.as_deref(), &endpoints)?;
    Ok(BottlePlan {
        name: input.name.to_string(),
        agent: input.agent.name.clone(),
        bottle: input.agent.bottle.clone(),
        image: input.image.to_string(),
        image_id: input.image_id.to_string(),
        cpus: input.bottle.cpus,
        memory_mib: input.bottle.memory_mib,
        user,
        workdir,
        argv,
        env,
        endpoints,
        cwd: input.cwd.clone(),
        daemons: input.daemons.iter().map(|d| d.name.to_string()).collect(),
        files,
    })
}

/// `USER` (`name`, `uid`, `name:group`, `uid:gid`, or empty for root) resolved against the
/// image's own passwd and group files, as Docker resolves it: a numeric uid not in passwd gets
/// gid 0 and home `/`.
fn guest_user(user: &str, passwd: &str, group: &str) -> Result<GuestUserPlan, PlanError> {
    let (who, grp) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let who = if who.is_empty() { "root" } else { who };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let found = match who.parse::<u32>() {
        Ok(uid) => entries.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => entries.iter().find(|f| f[0] == who),
    };
    let (name, uid, mut gid, home) = match (found, who.parse::<u32>()) {
        (Some(f), _) => (
            f[0].to_string(),
            f[2].parse().unwrap_or(0),
            f[3].parse().unwrap_or(0),
            f[5].to_string(),
        ),
        (None, Ok(uid)) => (uid.to_string(), uid, 0, "/".to_string()),
        (None, Err(_)) if who == "root" => ("root".into(), 0, 0, "/root".into()),
        (None, Err(_)) => {
            return Err(PlanError::UnknownUser {
                user: who.to_string(),
            });
        }
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| PlanError::UnknownGroup {
                    group: g.to_string(),
                })?,
        };
    }
    let home = if home.starts_with('/') {
        home
    } else {
        "/".into()
    };
    Ok(GuestUserPlan {
        name,
        uid,
        gid,
        home,
    })
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: value.into(),
    }
}

/// The image's ENV, then what the bottle needs (proxy, CA, placeholders), then the bottle's own
/// `env`, which wins.
fn guest_env(
    input: &PlanInput<'_>,
    user: &GuestUserPlan,
    endpoints: &[EndpointPlan],
) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = input
        .image_config
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(n, v)| var(n, v))
        .collect();
    if !env.iter().any(|e| e.name == "HOME") {
        env.push(var("HOME", &user.home));
    }
    if let Some(gw) = endpoints
        .iter()
        .find(|e| e.daemon == crate::daemon::gateway::DAEMON.name)
    {
        let proxy = format!("http://127.0.0.1:{}", gw.guest_port);
        // curl reads only the lower-case http_proxy; most others read either.
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            env.push(var(name, &proxy));
        }
        for name in ["NO_PROXY", "no_proxy"] {
            env.push(var(name, "localhost,127.0.0.1"));
        }
    }
    for name in CA_FILE_VARS {
        env.push(var(name, TRUST_BUNDLE));
    }
    for route in &input.bottle.routes {
        env.push(var(&route.token_env, PLACEHOLDER));
    }
    env.push(var("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"));
    if user.uid == 0 {
        // Claude Code refuses its bypass mode as root unless it is told it is sandboxed.
        env.push(var("IS_SANDBOX", "1"));
    }
    for (name, value) in &input.bottle.env {
        env.push(var(name, value));
    }
    env
}

/// The files to provision.
fn files(
    input: &PlanInput<'_>,
    user: &GuestUserPlan,
    workdir: &str,
    cwd: Option<&str>,
    endpoints: &[EndpointPlan],
) -> Result<Vec<ProvisionFile>, PlanError> {
    let port_of = |daemon: &DaemonSpec| {
        endpoints
            .iter()
            .find(|e| e.daemon == daemon.name)
            .map_or(daemon.port, |e| e.guest_port)
    };
    let home = user.home.trim_end_matches('/');
    let claude_dir = format!("{home}/.claude");
    let mine = |path: String, mode: u32, content: Content, what: String| ProvisionFile {
        path,
        uid: user.uid,
        gid: user.gid,
        mode,
        content,
        only_if_present: false,
        private_dirs: vec![claude_dir.clone()],
        what,
    };
    let roots = |path: &str, content: Content, only_if_present: bool, what: &str| ProvisionFile {
        path: path.to_string(),
        uid: 0,
        gid: 0,
        mode: 0o644,
        content,
        only_if_present,
        private_dirs: Vec::new(),
        what: what.to_string(),
    };
    let ca_block = || Content::Block {
        text: input.ca_pem.to_string(),
        comment: "#".into(),
    };
    let mut files = vec![
        roots(
            &format!(
                "/usr/local/share/ca-certificates/krbottle-{}.crt",
                input.bottle.name
            ),
            Content::Text {
                text: input.ca_pem.to_string(),
            },
            false,
            "the bottle CA, on its own",
        ),
        roots(
            TRUST_BUNDLE,
            ca_block(),
            false,
            "the bottle CA added to the image's trust bundle",
        ),
    ];
    for bundle in OTHER_TRUST_BUNDLES {
        files.push(roots(
            bundle,
            ca_block(),
            true,
            "the bottle CA added to this distribution's trust bundle",
        ));
    }
    if let Some(prompt) = input.prompt {
        files.push(mine(
            format!("{claude_dir}/CLAUDE.md"),
            0o600,
            Content::Text {
                text: prompt.to_string(),
            },
            "the agent's prompt".into(),
        ));
    }
    for skill in input.skills {
        let name = skill_name(skill)?;
        for (rel, data) in &skill.files {
            files.push(mine(
                format!("{claude_dir}/skills/{name}/{rel}"),
                0o644,
                Content::Text {
                    text: String::from_utf8_lossy(data).into_owned(),
                },
                format!("skill {name}"),
            ));
        }
    }
    let mut mcp = serde_json::Map::new();
    for d in input.daemons {
        if let Some(path) = d.mcp_path {
            mcp.insert(
                d.name.to_string(),
                serde_json::json!({"type": "http", "url": format!("http://127.0.0.1:{}{path}", port_of(d))}),
            );
        }
    }
    let mut claude = serde_json::json!({
        "hasCompletedOnboarding": true,
        "projects": { workdir: { "hasTrustDialogAccepted": true } },
    });
    if !mcp.is_empty() {
        claude["mcpServers"] = serde_json::Value::Object(mcp);
    }
    files.push(mine(
        format!("{home}/.claude.json"),
        0o600,
        Content::JsonMerge { patch: claude },
        "Claude Code's state: onboarding done, the workdir trusted, the bundle's MCP servers"
            .into(),
    ));
    let mut gitconfig = String::new();
    if let Some(author) = &input.bottle.git_user {
        gitconfig.push_str(&format!(
            "[user]\n\tname = {}\n\temail = {}\n",
            author.name, author.email
        ));
    }
    if let Some(gate) = input
        .daemons
        .iter()
        .find(|d| d.name == crate::daemon::git_gate::DAEMON.name)
    {
        gitconfig.push_str(&git_gate_rules(&input.bottle.git, port_of(gate)));
    }
    if !gitconfig.is_empty() {
        files.push(mine(
            format!("{home}/.gitconfig"),
            0o644,
            Content::Block {
                text: gitconfig,
                comment: "#".into(),
            },
            "git's identity and the upstreams' URLs rewritten to git-gate".into(),
        ));
    }
    if let (Cwd::Copy { path }, Some(guest)) = (input.cwd, cwd) {
        files.push(mine(
            guest.to_string(),
            0o755,
            Content::Tree { host: path.clone() },
            "the current directory, copied on the first start".into(),
        ));
    }
    Ok(files)
}

/// `insteadOf` rules sending every form of each upstream's URL (scp-like and `ssh://`, with
/// and without `.git`) to its gate repository at `127.0.0.1:port` in the guest: a clone of
/// the upstream's URL just works, through the gate.
fn git_gate_rules(repos: &[crate::manifest::GitRepo], port: u16) -> String {
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut text = String::new();
    for repo in repos {
        let gate = format!("http://127.0.0.1:{port}/{}.git", repo.name);
        text.push_str(&format!("[url {}]\n", quoted(&gate)));
        for form in repo.upstream.forms() {
            text.push_str(&format!("\tinsteadOf = {}\n", quoted(&form)));
        }
    }
    text
}

/// A skill's name from its `SKILL.md` front matter (`name:` between the leading `---` lines),
/// checked for use as a directory name; the description must be there too.
fn skill_name(skill: &Skill) -> Result<String, PlanError> {
    let err = |why: &str| PlanError::Skill {
        dir: skill.dir.clone(),
        why: why.to_string(),
    };
    let md = skill
        .files
        .iter()
        .find(|(rel, _)| rel == "SKILL.md")
        .ok_or_else(|| err("it has no SKILL.md"))?;
    let text = String::from_utf8_lossy(&md.1);
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("---") {
        return Err(err("SKILL.md must start with a `---` front matter block"));
    }
    let mut fields = BTreeMap::new();
    for line in lines.by_ref() {
        if line.trim() == "---" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    let name = fields
        .get("name")
        .ok_or_else(|| err("SKILL.md's front matter has no `name`"))?;
    if fields.get("description").is_none_or(|d| d.is_empty()) {
        return Err(err("SKILL.md's front matter has no `description`"));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(err(
            "the skill's `name` must be 1-64 letters, digits, `-` or `_`",
        ));
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nnode:x:1000:\nstaff:x:50:\n";

    fn manifest() -> Manifest {
        Manifest::parse(
            std::path::Path::new("krbottle.toml"),
            r#"
[agents.a]
image = "img"
bottle = "b"
[bottles.b]
env = { EDITOR = "vi", HTTPS_PROXY = "http://mine:1" }
git_user = { name = "Agent", email = "agent@example.com" }
[[bottles.b.routes]]
host = "api.anthropic.com"
header = "x-api-key"
token_env = "ANTHROPIC_API_KEY"
"#,
        )
        .unwrap()
    }

    /// A manifest in a temp dir that holds the `id` and `kh` files its git repos name.
    fn with_key_files(text: &str) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["id", "kh"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let m = Manifest::parse(&dir.path().join("krbottle.toml"), text).unwrap();
        (dir, m)
    }

    fn config(user: &str) -> ImageConfig {
        ImageConfig {
            user: user.into(),
            working_dir: "/work".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["arg".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
        }
    }

    fn plan_for(user: &str, argv: &[String], cwd: &Cwd) -> Result<BottlePlan, PlanError> {
        let m = manifest();
        let skills = vec![Skill {
            dir: "skills/review".into(),
            files: vec![(
                "SKILL.md".into(),
                b"---\nname: review\ndescription: Reviews code\n---\nBody\n".to_vec(),
            )],
        }];
        let config = config(user);
        plan(&PlanInput {
            name: "a-x1y2",
            agent: &m.agents["a"],
            bottle: &m.bottles["b"],
            image: "img",
            image_id: "sha256:00",
            image_config: &config,
            passwd: PASSWD,
            group: GROUP,
            ca_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            prompt: Some("Be careful."),
            skills: &skills,
            argv,
            cwd,
            daemons: &[&crate::daemon::gateway::DAEMON],
            reach: &Reach::Relayed,
        })
    }

    fn env_of(p: &BottlePlan, name: &str) -> Option<String> {
        p.env
            .iter()
            .rev()
            .find(|e| e.name == name)
            .map(|e| e.value.clone())
    }

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        type Case = (&'static str, Result<(u32, u32, &'static str), PlanError>);
        let table: &[Case] = &[
            ("", Ok((0, 0, "/root"))),
            ("node", Ok((1000, 1000, "/home/node"))),
            ("1000", Ok((1000, 1000, "/home/node"))),
            ("4242", Ok((4242, 0, "/"))),
            ("node:staff", Ok((1000, 50, "/home/node"))),
            ("node:77", Ok((1000, 77, "/home/node"))),
            (
                "nobody",
                Err(PlanError::UnknownUser {
                    user: "nobody".into(),
                }),
            ),
            (
                "node:nogroup",
                Err(PlanError::UnknownGroup {
                    group: "nogroup".into(),
                }),
            ),
        ];
        for (user, want) in table {
            let got = guest_user(user, PASSWD, GROUP).map(|u| (u.uid, u.gid, u.home.clone()));
            let want = want
                .as_ref()
                .map(|(u, g, h)| (*u, *g, h.to_string()))
                .map_err(Clone::clone);
            assert_eq!(got, want, "USER {user:?}");
        }
    }

    #[test]
    fn the_plan_has_the_process_env_endpoints_and_files() {
        let p = plan_for("node", &[], &Cwd::None).unwrap();
        assert_eq!(p.argv, ["/entry", "arg"]);
        assert_eq!(p.workdir, "/work");
        assert_eq!((p.user.uid, p.user.gid), (1000, 1000));
        assert_eq!(
            p.endpoints,
            [EndpointPlan {
                daemon: "gateway".into(),
                guest_port: crate::ports::GATEWAY,
                relayed: true,
            }]
        );
        assert_eq!(env_of(&p, "PATH").as_deref(), Some("/usr/bin:/bin"));
        assert_eq!(env_of(&p, "HOME").as_deref(), Some("/home/node"));
        assert_eq!(
            env_of(&p, "http_proxy").as_deref(),
            Some("http://127.0.0.1:8888")
        );
        // The bottle's own env wins.
        assert_eq!(env_of(&p, "HTTPS_PROXY").as_deref(), Some("http://mine:1"));
        assert_eq!(
            env_of(&p, "NODE_EXTRA_CA_CERTS").as_deref(),
            Some(TRUST_BUNDLE)
        );
        assert_eq!(
            env_of(&p, "ANTHROPIC_API_KEY").as_deref(),
            Some(PLACEHOLDER)
        );
        assert_eq!(env_of(&p, "IS_SANDBOX"), None, "not root");
        assert_eq!(env_of(&p, "EDITOR").as_deref(), Some("vi"));
        let paths: Vec<_> = p.files.iter().map(|f| f.path.as_str()).collect();
        for want in [
            "/usr/local/share/ca-certificates/krbottle-b.crt",
            TRUST_BUNDLE,
            "/home/node/.claude/CLAUDE.md",
            "/home/node/.claude/skills/review/SKILL.md",
            "/home/node/.claude.json",
            "/home/node/.gitconfig",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let prompt = p
            .files
            .iter()
            .find(|f| f.path.ends_with("CLAUDE.md"))
            .unwrap();
        assert_eq!((prompt.uid, prompt.gid, prompt.mode), (1000, 1000, 0o600));
        let claude = p
            .files
            .iter()
            .find(|f| f.path.ends_with(".claude.json"))
            .unwrap();
        let Content::JsonMerge { patch } = &claude.content else {
            panic!("{claude:?}")
        };
        assert_eq!(patch["projects"]["/work"]["hasTrustDialogAccepted"], true);
        // No secret: nothing but the placeholder and names.
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("PRIVATE KEY"));
    }

    #[test]
    fn macos_guests_dial_the_published_ports_everywhere() {
        let (_dir, m) = with_key_files(
            "[agents.a]\nimage = \"img\"\nbottle = \"b\"\n[bottles.b]\nsupervise = true\n\
             [[bottles.b.git]]\nname = \"app\"\nupstream = \"git@host.example:org/app.git\"\nidentity_file = \"id\"\nknown_hosts = \"kh\"\n",
        );
        let bottle = &m.bottles["b"];
        let daemons = crate::daemon::enabled_for(bottle);
        let names: Vec<_> = daemons.iter().map(|d| d.name).collect();
        assert_eq!(
            names,
            ["gateway", "git-gate", "supervise"],
            "the test's bottle"
        );
        let published = BTreeMap::from([
            ("gateway".to_string(), 52001),
            ("git-gate".to_string(), 52002),
            ("supervise".to_string(), 52003),
        ]);
        let config = config("node");
        let input = PlanInput {
            name: "a-x1y2",
            agent: &m.agents["a"],
            bottle,
            image: "img",
            image_id: "sha256:00",
            image_config: &config,
            passwd: PASSWD,
            group: GROUP,
            ca_pem: "CA",
            prompt: None,
            skills: &[],
            argv: &[],
            cwd: &Cwd::None,
            daemons: &daemons,
            reach: &Reach::Published(published.clone()),
        };
        let p = plan(&input).unwrap();
        let endpoints: Vec<_> = p
            .endpoints
            .iter()
            .map(|e| (e.daemon.as_str(), e.guest_port, e.relayed))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("gateway", 52001, false),
                ("git-gate", 52002, false),
                ("supervise", 52003, false)
            ]
        );
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            assert_eq!(
                env_of(&p, name).as_deref(),
                Some("http://127.0.0.1:52001"),
                "{name}"
            );
        }
        let file = |suffix: &str| {
            p.files
                .iter()
                .find(|f| f.path.ends_with(suffix))
                .unwrap_or_else(|| panic!("no {suffix}"))
                .content
                .clone()
        };
        let Content::JsonMerge { patch } = file(".claude.json") else {
            panic!("not a JSON merge")
        };
        assert_eq!(
            patch["mcpServers"]["supervise"]["url"],
            "http://127.0.0.1:52003/mcp"
        );
        let Content::Block { text, .. } = file(".gitconfig") else {
            panic!("not a block")
        };
        assert!(
            text.contains("[url \"http://127.0.0.1:52002/app.git\"]"),
            "{text}"
        );
        // No daemon's own (relayed) port is left anywhere the guest reads.
        let json = serde_json::to_string(&(&p.env, &patch, &text)).unwrap();
        for port in [
            crate::ports::GATEWAY,
            crate::ports::GIT_GATE,
            crate::ports::SUPERVISE,
        ] {
            assert!(!json.contains(&format!(":{port}")), "{port} in {json}");
        }
        assert!(
            describe(&p).contains("endpoint  127.0.0.1:52001 published by gateway"),
            "{}",
            describe(&p)
        );
        // A daemon without a chosen port is a bug, said so, not a guess.
        let mut missing = published;
        missing.remove("supervise");
        let reach = Reach::Published(missing);
        assert_eq!(
            plan(&PlanInput {
                reach: &reach,
                ..input
            })
            .unwrap_err(),
            PlanError::NoPublishedPort {
                daemon: "supervise".into()
            }
        );
    }

    #[test]
    fn every_form_of_an_upstream_url_goes_to_the_gate() {
        let (dir, m) = with_key_files(
            "[bottles.b]\n[[bottles.b.git]]\nname = \"app\"\nupstream = \"git@host.example:org/app.git\"\nidentity_file = \"id\"\nknown_hosts = \"kh\"\n\
             [[bottles.b.git]]\nname = \"lib\"\nupstream = \"ssh://git@host.example:2222/org/lib\"\nidentity_file = \"id\"\nknown_hosts = \"kh\"\n",
        );
        let text = git_gate_rules(&m.bottles["b"].git, crate::ports::GIT_GATE);
        let config = dir.path().join("gitconfig");
        std::fs::write(&config, &text).unwrap();
        // git itself applies the rules (`ls-remote --get-url` rewrites without connecting).
        let cases = [
            (
                "git@host.example:org/app.git",
                "http://127.0.0.1:9418/app.git",
            ),
            ("git@host.example:org/app", "http://127.0.0.1:9418/app.git"),
            (
                "ssh://git@host.example/org/app.git",
                "http://127.0.0.1:9418/app.git",
            ),
            (
                "ssh://git@host.example/org/app",
                "http://127.0.0.1:9418/app.git",
            ),
            (
                "ssh://git@host.example:22/org/app.git",
                "http://127.0.0.1:9418/app.git",
            ),
            (
                "ssh://git@host.example:2222/org/lib",
                "http://127.0.0.1:9418/lib.git",
            ),
            (
                "ssh://git@host.example:2222/org/lib.git",
                "http://127.0.0.1:9418/lib.git",
            ),
            (
                "git@other.example:org/app.git",
                "git@other.example:org/app.git",
            ),
        ];
        for (url, want) in cases {
            let out = std::process::Command::new("git")
                .args(["ls-remote", "--get-url", url])
                .env("GIT_CONFIG_GLOBAL", &config)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .expect("git runs");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                want,
                "{url}\n{text}"
            );
        }
    }

    #[test]
    fn root_commands_and_cwd() {
        let p = plan_for("", &["sh".into(), "-c".into(), "true".into()], &Cwd::None).unwrap();
        assert_eq!(p.argv, ["sh", "-c", "true"]);
        assert_eq!(env_of(&p, "IS_SANDBOX").as_deref(), Some("1"));
        let cwd = Cwd::Copy {
            path: "/home/me/project".into(),
        };
        let p = plan_for("node", &[], &cwd).unwrap();
        assert_eq!(p.workdir, "/home/me/project");
        assert!(
            p.files
                .iter()
                .any(|f| f.path == "/home/me/project" && matches!(f.content, Content::Tree { .. }))
        );
        let bad = Cwd::Share {
            path: "/a:b".into(),
        };
        assert!(matches!(
            plan_for("node", &[], &bad),
            Err(PlanError::Cwd(_))
        ));
    }

    #[test]
    fn skills_need_front_matter_with_a_safe_name() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"---\nname: ok-1\ndescription: d\n---\n", None),
            (b"no front matter", Some("front matter")),
            (b"---\ndescription: d\n---\n", Some("no `name`")),
            (b"---\nname: x\n---\n", Some("no `description`")),
            (b"---\nname: ../x\ndescription: d\n---\n", Some("letters")),
        ];
        for (md, want) in cases {
            let skill = Skill {
                dir: "s".into(),
                files: vec![("SKILL.md".into(), md.to_vec())],
            };
            match (skill_name(&skill), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e}"),
                (got, w) => panic!("{:?}: {got:?}, want {w:?}", String::from_utf8_lossy(md)),
            }
        }
    }
}
