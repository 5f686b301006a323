//! `krbottle bundle git-hook`: the pre-receive hook of every gate repository. git runs it in
//! the push's quarantine (the new objects are readable, no ref has moved yet) with the pushed
//! updates on stdin; it decides, pushes what it accepts upstream, and its exit status decides
//! whether the gate's refs move.
//!
//! Invariants:
//! - All or nothing: one refused update refuses the whole push, here and upstream
//!   (`git push --atomic`), so the gate and the upstream never disagree because of a refusal.
//! - Every new object (blobs, trees, commits, tags; not only added lines) is scanned for the
//!   bundle's secrets and for well-known credential formats before anything goes upstream.
//! - What the agent reads (stderr, relayed by git as `remote:` lines) and the decision lines
//!   name the rule, the ref, and for a secret the file and commit, never the secret; both are
//!   scrubbed of the bundle's secrets all the same.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use super::config::{ConfigError, GitGateConfig, RepoConfig};
use super::policy::{self, Change, Refusal, rules};
use super::upstream;
use crate::secrets::SecretSet;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Cannot read the pushed updates from git")]
    ReadUpdates(#[source] std::io::Error),
}

/// One line of the hook's stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub refname: String,
}

impl RefUpdate {
    fn change(&self, fast_forward: bool) -> Change {
        if policy::is_zero(&self.old) {
            Change::Create
        } else if policy::is_zero(&self.new) {
            Change::Delete
        } else {
            Change::Update { fast_forward }
        }
    }
}

/// One decision line per pushed ref, in the daemon's log.
#[derive(Debug, Serialize)]
pub struct RefDecision<'a> {
    pub time: String,
    pub bottle: &'a str,
    pub repo: &'a str,
    #[serde(rename = "ref")]
    pub refname: &'a str,
    pub old: &'a str,
    pub new: &'a str,
    /// `allow` (pushed upstream), `deny` (the ref policy), `block` (a secret or a
    /// credential), `fail` (the upstream refused, or the gate could not check).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Runs the hook for `repo` of the gate config at `config`; returns the exit status for git.
pub fn run(config: &Path, repo: &str) -> Result<u8, HookError> {
    let config = GitGateConfig::load(config)?;
    let repo_cfg = config
        .repo(repo)
        .ok_or_else(|| ConfigError::NoRepo {
            path: PathBuf::from(repo),
            repo: repo.to_string(),
        })?
        .clone();
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(HookError::ReadUpdates)?;
    let updates: Vec<RefUpdate> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some(RefUpdate {
                old: it.next()?.to_string(),
                new: it.next()?.to_string(),
                refname: it.next()?.to_string(),
            })
        })
        .collect();
    let secrets = bundle_secrets(&config);
    let gate = Gate {
        config: &config,
        repo: &repo_cfg,
        dir: std::env::var_os("GIT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| config.repo_dir(repo)),
        secrets: secrets.as_ref().ok(),
    };
    let verdicts = match &secrets {
        Ok(_) => gate.decide(&updates),
        Err(why) => updates
            .iter()
            .map(|_| {
                Err(Refusal {
                    rule: rules::GATE,
                    reason: why.clone(),
                })
            })
            .collect(),
    };
    let accepted = verdicts.iter().all(Result::is_ok);
    let outcome: Vec<Result<(), Refusal>> = if accepted && !updates.is_empty() {
        match gate.push_upstream(&updates, &verdicts) {
            Ok(()) => updates.iter().map(|_| Ok(())).collect(),
            Err(r) => updates.iter().map(|_| Err(r.clone())).collect(),
        }
    } else {
        verdicts.into_iter().map(|v| v.map(|_| ())).collect()
    };
    gate.report(&updates, &outcome);
    Ok(if outcome.iter().all(Result::is_ok) {
        0
    } else {
        1
    })
}

/// The bundle's secrets from this process's environment (the daemon's, passed down by git).
fn bundle_secrets(config: &GitGateConfig) -> Result<SecretSet, String> {
    let values: Vec<(String, String)> = config
        .secret_envs
        .iter()
        .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v)))
        .collect();
    SecretSet::new(values.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
        .map_err(|e| format!("the gate cannot scan for the bundle's secrets: {e}"))
}

struct Gate<'a> {
    config: &'a GitGateConfig,
    repo: &'a RepoConfig,
    dir: PathBuf,
    secrets: Option<&'a SecretSet>,
}

impl Gate<'_> {
    fn git(&self) -> std::process::Command {
        // The hook's environment is git's (the quarantine's object directories included).
        let mut cmd = std::process::Command::new("git");
        cmd.arg("--git-dir").arg(&self.dir).stdin(Stdio::null());
        cmd
    }

    /// The verdict on each update: `Ok(pattern)` or the refusal. One refusal refuses all.
    fn decide(&self, updates: &[RefUpdate]) -> Vec<Result<String, Refusal>> {
        let mut verdicts: Vec<Result<String, Refusal>> = updates
            .iter()
            .map(|u| {
                let ff = !policy::is_zero(&u.old)
                    && !policy::is_zero(&u.new)
                    && self.is_ancestor(&u.old, &u.new);
                policy::check(self.repo, &u.refname, u.change(ff)).map(str::to_string)
            })
            .collect();
        if verdicts.iter().all(Result::is_ok)
            && let Some(size) = quarantine_size()
            && size > self.repo.max_push_bytes
        {
            let r = Refusal {
                rule: rules::TOO_LARGE,
                reason: format!(
                    "the push is {:.1} MiB, above this gate's limit of {} MiB (`max_push_mib`)",
                    size as f64 / 1048576.0,
                    self.repo.max_push_bytes / 1048576
                ),
            };
            verdicts = updates.iter().map(|_| Err(r.clone())).collect();
        }
        if verdicts.iter().all(Result::is_ok) {
            for (u, v) in updates.iter().zip(verdicts.iter_mut()) {
                if policy::is_zero(&u.new) {
                    continue;
                }
                if let Err(r) = self.scan(u) {
                    *v = Err(r);
                }
            }
        }
        if let Some(first) = verdicts.iter().position(Result::is_err) {
            let culprit = updates[first].refname.clone();
            for v in verdicts.iter_mut().filter(|v| v.is_ok()) {
                *v = Err(Refusal {
                    rule: rules::OTHER_REF,
                    reason: format!(
                        "refused with {culprit}: a push goes upstream whole or not at all"
                    ),
                });
            }
        }
        verdicts
    }

    fn is_ancestor(&self, old: &str, new: &str) -> bool {
        self.git()
            .args(["merge-base", "--is-ancestor", old, new])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Scans every object `u` brings that the gate does not have yet.
    fn scan(&self, u: &RefUpdate) -> Result<(), Refusal> {
        let gate_error = |what: String| Refusal {
            rule: rules::GATE,
            reason: format!("the gate could not scan the push ({what}); nothing was pushed"),
        };
        let out = self
            .git()
            .args(["rev-list", "--objects", &u.new, "--not", "--all"])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| gate_error(e.to_string()))?;
        if !out.status.success() {
            return Err(gate_error(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut paths: BTreeMap<&str, &str> = BTreeMap::new();
        for line in listing.lines() {
            let (oid, path) = line.split_once(' ').unwrap_or((line, ""));
            paths.entry(oid).or_insert(path);
        }
        if paths.is_empty() {
            return Ok(());
        }
        let mut child = self
            .git()
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| gate_error(e.to_string()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let ids: Vec<String> = paths.keys().map(|s| s.to_string()).collect();
        let writer = std::thread::spawn(move || {
            for id in ids {
                if writeln!(stdin, "{id}").is_err() {
                    return;
                }
            }
        });
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut found = None;
        let mut header = String::new();
        let mut data = Vec::new();
        loop {
            header.clear();
            match reader.read_line(&mut header) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    found = Some(Err(gate_error(e.to_string())));
                    break;
                }
            }
            let mut parts = header.split_whitespace();
            let (Some(oid), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next())
            else {
                found = Some(Err(gate_error(format!("cat-file said {}", header.trim()))));
                break;
            };
            let Ok(size) = size.parse::<usize>() else {
                found = Some(Err(gate_error("cat-file size".into())));
                break;
            };
            data.resize(size + 1, 0);
            if let Err(e) = reader.read_exact(&mut data) {
                found = Some(Err(gate_error(e.to_string())));
                break;
            }
            data.truncate(size);
            if found.is_some() {
                continue;
            }
            if let Some((rule, what)) = self.finds(&data) {
                found = Some(Ok((oid.to_string(), kind.to_string(), rule, what)));
            }
        }
        let _ = writer.join();
        let _ = child.wait();
        match found {
            None => Ok(()),
            Some(Err(r)) => Err(r),
            Some(Ok((oid, kind, rule, what))) => {
                let path = paths.get(oid.as_str()).copied().unwrap_or("");
                let place = match kind.as_str() {
                    "blob" => {
                        let commit = self.introducing_commit(&u.new, &oid);
                        format!("file {path} in commit {commit}")
                    }
                    "tree" if path.is_empty() => format!("a file name in the root tree {oid}"),
                    "tree" => format!("a file name in directory {path}"),
                    "commit" => format!("the message or header of commit {oid}"),
                    other => format!("{other} object {oid}"),
                };
                Err(Refusal {
                    rule,
                    reason: format!(
                        "{}: {what} found in {place}; remove it from the history (e.g. `git rebase -i`, then amend) and push again",
                        u.refname
                    ),
                })
            }
        }
    }

    /// What the scanners find in one object: the rule and what was found (a name, never the
    /// value).
    fn finds(&self, data: &[u8]) -> Option<(&'static str, String)> {
        if let Some(name) = self.secrets.and_then(|s| s.find_in(data, None)) {
            return Some((rules::SECRET, format!("the bundle's secret {name}")));
        }
        crate::secrets::find_credential(data)
            .map(|kind| (rules::CREDENTIAL, format!("a credential ({kind})")))
    }

    /// The oldest new commit of `tip` that brought `blob`.
    fn introducing_commit(&self, tip: &str, blob: &str) -> String {
        let out = self
            .git()
            .args([
                "log",
                "--format=%H",
                &format!("--find-object={blob}"),
                tip,
                "--not",
                "--all",
            ])
            .stderr(Stdio::null())
            .output();
        out.ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .last()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(unknown)".into())
    }

    /// Pushes the accepted updates upstream, atomically; relays upstream's messages.
    fn push_upstream(
        &self,
        updates: &[RefUpdate],
        verdicts: &[Result<String, Refusal>],
    ) -> Result<(), Refusal> {
        let _ = verdicts;
        let mut cmd = self.git();
        cmd.env("GIT_SSH_COMMAND", upstream::ssh_command(self.repo))
            .args(["push", "--atomic", "--porcelain", "--no-verify"]);
        for u in updates {
            if !policy::is_zero(&u.old) {
                // The upstream must still be where the gate last saw it.
                cmd.arg(format!("--force-with-lease={}:{}", u.refname, u.old));
            }
        }
        cmd.arg("--").arg(&self.repo.upstream);
        for u in updates {
            if policy::is_zero(&u.new) {
                cmd.arg(format!(":{}", u.refname));
            } else {
                cmd.arg(format!("{}:{}", u.new, u.refname));
            }
        }
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
        let out = out.map_err(|e| Refusal {
            rule: rules::GATE,
            reason: format!("the gate cannot run git push: {e}"),
        })?;
        let mut relayed = Vec::new();
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            let line = line.strip_prefix("remote: ").unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            relayed.push(format!("upstream: {line}"));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| l.starts_with('!')) {
            relayed.push(format!("upstream: {line}"));
        }
        self.say(&relayed.join("\n"));
        if out.status.success() {
            return Ok(());
        }
        let why = stdout
            .lines()
            .find(|l| l.starts_with('!'))
            .map(|l| l.split('\t').skip(2).collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("it failed")
                    .to_string()
            });
        Err(Refusal {
            rule: rules::UPSTREAM,
            reason: format!("the upstream refused the push: {why}; nothing was pushed"),
        })
    }

    /// Writes `text` for the agent (git relays the hook's stderr as `remote:` lines).
    fn say(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let scrubbed = match self.secrets {
            Some(s) => String::from_utf8_lossy(&s.scrub(text.as_bytes())).into_owned(),
            None => text.to_string(),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{scrubbed}");
    }

    /// The agent's summary and one decision line per ref.
    fn report(&self, updates: &[RefUpdate], outcome: &[Result<(), Refusal>]) {
        let mut lines = Vec::new();
        let mut log = decision_file();
        for (u, o) in updates.iter().zip(outcome) {
            let (decision, rule, reason) = match o {
                Ok(()) => ("allow", None, None),
                Err(r) => {
                    let decision = match r.rule {
                        rules::SECRET | rules::CREDENTIAL => "block",
                        rules::UPSTREAM | rules::GATE => "fail",
                        _ => "deny",
                    };
                    (decision, Some(r.rule), Some(r.reason.clone()))
                }
            };
            if let (Some(rule), Some(reason)) = (rule, &reason)
                && rule != rules::OTHER_REF
            {
                lines.push(format!(
                    "krbottle git-gate refused {} (rule {rule}): {reason}",
                    u.refname
                ));
            }
            let line = RefDecision {
                time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                bottle: &self.config.bottle,
                repo: &self.repo.name,
                refname: &u.refname,
                old: &u.old,
                new: &u.new,
                decision,
                rule,
                reason,
            };
            if let (Some(f), Ok(mut json)) = (log.as_mut(), serde_json::to_vec(&line)) {
                if let Some(s) = self.secrets {
                    json = s.scrub(&json);
                }
                json.push(b'\n');
                let _ = f.write_all(&json);
            }
        }
        self.say(&lines.join("\n"));
    }
}

/// The file the daemon reads this push's decision lines from (one per request).
fn decision_file() -> Option<std::fs::File> {
    let path: OsString = std::env::var_os(crate::env_vars::KRBOTTLE_GIT_GATE_DECISIONS)?;
    std::fs::OpenOptions::new().append(true).open(path).ok()
}

/// The size of what the push brought (git's quarantine directory), if known.
fn quarantine_size() -> Option<u64> {
    let dir = std::env::var_os("GIT_QUARANTINE_PATH")?;
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => 0,
            })
            .sum()
    }
    Some(walk(Path::new(&dir)))
}
