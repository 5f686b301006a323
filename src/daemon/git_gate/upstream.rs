//! How the gate talks to an upstream: stock `git` over `ssh` with the repository's key and
//! strict host-key checking against its known hosts (no trust on first use, no agent, no user
//! config). Shared by the daemon (fetch) and the hook (push).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::config::{GitGateConfig, RepoConfig};

/// The `GIT_SSH_COMMAND` for `repo`: its key only, its known hosts only, never a prompt.
pub fn ssh_command(repo: &RepoConfig) -> String {
    format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20",
        shell_quote(&repo.identity_file.to_string_lossy()),
        shell_quote(&repo.known_hosts.to_string_lossy()),
    )
}

/// `s` as one word for `sh` (git runs `GIT_SSH_COMMAND` through the shell).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The environment every git of the gate gets, on top of the daemon's: the config that makes
/// the bare repositories servable and pushable over smart HTTP, a writable `HOME`, a fixed
/// identity, and in the container a passwd entry for ssh.
pub fn base_env(config: &GitGateConfig) -> std::io::Result<Vec<(OsString, OsString)>> {
    let settings = [
        ("http.receivepack", "true"),
        ("http.uploadpack", "true"),
        ("http.getanyfile", "false"),
        ("receive.advertisePushOptions", "false"),
        ("receive.fsckObjects", "true"),
        // Keep every push as the pack it came in: the size cap measures what was sent, and
        // the push upstream reuses its compressed objects instead of deflating them again.
        ("receive.unpackLimit", "1"),
        ("core.logAllRefUpdates", "false"),
        ("safe.directory", "*"),
        ("protocol.allow", "never"),
        ("protocol.ssh.allow", "always"),
    ];
    let mut env: Vec<(OsString, OsString)> =
        vec![("GIT_CONFIG_COUNT".into(), settings.len().to_string().into())];
    for (i, (k, v)) in settings.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}").into(), (*k).into()));
        env.push((format!("GIT_CONFIG_VALUE_{i}").into(), (*v).into()));
    }
    let home = config.repos_dir.join(".home");
    std::fs::create_dir_all(&home)?;
    env.push(("HOME".into(), home.clone().into()));
    env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    for (k, v) in [
        ("GIT_AUTHOR_NAME", "krbottle git-gate"),
        ("GIT_AUTHOR_EMAIL", "git-gate@krbottle.invalid"),
        ("GIT_COMMITTER_NAME", "krbottle git-gate"),
        ("GIT_COMMITTER_EMAIL", "git-gate@krbottle.invalid"),
    ] {
        env.push((k.into(), v.into()));
    }
    if config.in_container && !uid_has_passwd_entry() {
        env.extend(nss_wrapper_env(&home)?);
    }
    Ok(env)
}

/// Whether this process's uid is in `/etc/passwd` (ssh exits without one).
fn uid_has_passwd_entry() -> bool {
    let uid = rustix::process::getuid().as_raw().to_string();
    std::fs::read_to_string("/etc/passwd").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split(':').nth(2) == Some(uid.as_str()))
    })
}

/// nss_wrapper's files giving this uid and gid a name (the bundle image installs the
/// library): the container runs as the host user's id, which the image cannot know.
fn nss_wrapper_env(home: &Path) -> std::io::Result<Vec<(OsString, OsString)>> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let passwd = home.join("passwd");
    let group = home.join("group");
    crate::sys::fs::write_atomic(
        &passwd,
        format!(
            "gate:x:{uid}:{gid}:krbottle git-gate:{}:/bin/sh\n",
            home.display()
        )
        .as_bytes(),
        0o644,
    )?;
    crate::sys::fs::write_atomic(&group, format!("gate:x:{gid}:\n").as_bytes(), 0o644)?;
    Ok(vec![
        ("LD_PRELOAD".into(), "libnss_wrapper.so".into()),
        ("NSS_WRAPPER_PASSWD".into(), passwd.into()),
        ("NSS_WRAPPER_GROUP".into(), group.into()),
    ])
}

/// `git` with the gate's environment for `repo_dir`.
pub fn git(env: &[(OsString, OsString)], repo_dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--git-dir")
        .arg(repo_dir)
        .stdin(std::process::Stdio::null());
    cmd
}

/// Creates the bare repository `dir` if it is missing, and (re)writes its pre-receive hook:
/// this very binary, `krbottle bundle git-hook`, with the daemon's config.
pub fn prepare_repo(
    env: &[(OsString, OsString)],
    dir: &Path,
    config_path: &Path,
    repo: &str,
) -> std::io::Result<()> {
    if !dir.join("HEAD").exists() {
        let out = std::process::Command::new("git")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["init", "--bare", "--quiet"])
            .arg(dir)
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "git init --bare {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks)?;
    let exe = std::env::current_exe()?;
    let script = format!(
        "#!/bin/sh\n# Written by krbottle git-gate at every start: the push policy.\nexec {} bundle {} --config {} --repo {}\n",
        shell_quote(&exe.to_string_lossy()),
        crate::hidden::GIT_HOOK,
        shell_quote(&absolute(config_path).to_string_lossy()),
        shell_quote(repo),
    );
    crate::sys::fs::write_atomic(&hooks.join("pre-receive"), script.as_bytes(), 0o755)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Fetches every branch and tag of `repo`'s upstream into the gate's copy (pruning what
/// upstream deleted). The error is git's message.
pub fn fetch(env: &[(OsString, OsString)], dir: &Path, repo: &RepoConfig) -> Result<(), String> {
    let out = git(env, dir)
        .env("GIT_SSH_COMMAND", ssh_command(repo))
        .args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--update-head-ok",
            "--no-write-fetch-head",
        ])
        .arg("--")
        .arg(&repo.upstream)
        .args(["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

/// Whether the gate's `HEAD` names a commit.
pub fn head_resolves(env: &[(OsString, OsString)], dir: &Path) -> bool {
    git(env, dir)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Points the gate's `HEAD` at the upstream's default branch (best effort, at start).
pub fn follow_head(env: &[(OsString, OsString)], dir: &Path, repo: &RepoConfig) {
    let Ok(out) = git(env, dir)
        .env("GIT_SSH_COMMAND", ssh_command(repo))
        .args(["ls-remote", "--symref", "--"])
        .arg(&repo.upstream)
        .arg("HEAD")
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let head = text.lines().find_map(|l| {
        l.strip_prefix("ref: ")
            .and_then(|r| r.strip_suffix("\tHEAD"))
            .filter(|r| r.starts_with("refs/heads/") && crate::refs::check_ref_format(r).is_ok())
    });
    if let Some(head) = head {
        let _ = git(env, dir).args(["symbolic-ref", "HEAD", head]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_one_word() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
