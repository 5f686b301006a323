//! What the VMM child is asked to do, and the `/.krun_config.json` the guest's init reads.
//!
//! [`VmConfig`] travels from the parent to the `__vmm` child as JSON over a pipe. Everything in
//! it has been validated by the parent: env names and values the guest can receive, an argv
//! with a program, an absolute workdir. The guest's process (argv, env, workdir, uid/gid) goes
//! in [`KrunConfigFile`], never on the kernel command line (at most ~32 entries and 2048 bytes,
//! entries quoted, and the guest panics beyond that).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the guest's init looks for its process description.
pub const KRUN_CONFIG_PATH: &str = "/.krun_config.json";
/// Mode of the config file: a regular, read-only file.
pub const KRUN_CONFIG_MODE: u32 = 0o100444;
/// The `PATH` the guest gets when none is given (Docker's default).
pub const DEFAULT_GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("Bad --endpoint `{0}`: expected GUESTPORT=HOST:PORT, e.g. 8888=127.0.0.1:41234")]
    ParseEndpoint(String),
    #[error("Bad --share `{0}`: expected HOSTDIR:GUESTDIR[:ro] with an absolute GUESTDIR")]
    ParseShare(String),
    #[error("Bad --user `{0}`: expected numeric UID:GID, e.g. 1000:1000")]
    ParseUser(String),
    #[error("Bad environment entry `{0}`: expected NAME=VALUE")]
    ParseEnv(String),
    #[error(
        "Environment variable name `{0}` cannot be given to the guest: use a non-empty name without `=` or NUL"
    )]
    EnvName(String),
    #[error(
        "Value of environment variable `{0}` contains a NUL byte, which the guest cannot receive"
    )]
    EnvValue(String),
    #[error("Argument {0} of the command contains a NUL byte, which the guest cannot receive")]
    Argument(usize),
    #[error("No command given: add `-- CMD [ARGS...]`")]
    NoCommand,
    #[error("Working directory `{0}` must be an absolute path without NUL bytes")]
    Workdir(String),
    #[error("Bad --overlay `{0}`: expected LOWER:UPPER, paths without `,` or `:`")]
    ParseOverlay(String),
    #[error("Guest port {0} is given to two --endpoint options; use each guest port once")]
    DuplicateGuestPort(u16),
    #[error(
        "--endpoint `{0}`: on macOS the guest dials the upstream itself (no relay), so it must be a 127.0.0.1 port given as its own guest port, e.g. 3128=127.0.0.1:3128"
    )]
    NotDirect(String),
}

/// A guest-facing endpoint: a listener on `127.0.0.1:guest_port` in the VMM's network namespace,
/// relayed to `host:port` in the host's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub guest_port: u16,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `GUESTPORT=HOST:PORT`; HOST may be a name, an IPv4 address or `[IPv6]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::ParseEndpoint(s.to_owned());
        let (guest, upstream) = s.split_once('=').ok_or_else(err)?;
        let guest_port: u16 = guest.parse().map_err(|_| err())?;
        let (host, port) = upstream.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let host = match host.strip_prefix('[') {
            Some(rest) => rest.strip_suffix(']').ok_or_else(err)?,
            None if host.contains(':') => return Err(err()),
            None => host,
        };
        if guest_port == 0 || port == 0 || host.is_empty() || host.contains(char::is_whitespace) {
            return Err(err());
        }
        Ok(Self {
            guest_port,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port` as given, bracketing IPv6 literals.
    pub fn upstream(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An endpoint whose upstream has been resolved by the parent (the child cannot resolve names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedEndpoint {
    pub guest_port: u16,
    pub upstream: SocketAddr,
}

/// An extra host directory shared with the guest through virtio-fs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl Share {
    /// Parses `HOSTDIR:GUESTDIR[:ro]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::ParseShare(s.to_owned());
        let (rest, read_only) = match s.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let (host, guest) = rest.split_once(':').ok_or_else(err)?;
        if host.is_empty() || !guest.starts_with('/') || guest.contains(['\0', ':']) {
            return Err(err());
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            read_only,
        })
    }

    /// The virtio-fs tag of the share: its guest path, which is unique and tells the guest
    /// where it belongs.
    pub fn tag(&self) -> &str {
        &self.guest
    }
}

/// The numeric user and group the guest's command runs as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestUser {
    pub uid: u32,
    pub gid: u32,
}

impl GuestUser {
    pub const ROOT: GuestUser = GuestUser { uid: 0, gid: 0 };

    /// Parses `UID:GID` (numeric).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::ParseUser(s.to_owned());
        let (uid, gid) = s.split_once(':').ok_or_else(err)?;
        Ok(GuestUser {
            uid: uid.parse().map_err(|_| err())?,
            gid: gid.parse().map_err(|_| err())?,
        })
    }
}

/// One `NAME=VALUE` environment entry the guest can receive (no `=` or NUL in the name, no NUL
/// in the value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

impl EnvVar {
    /// Parses one `NAME=VALUE` entry (from `--env` or an env file).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::ParseEnv(s.to_owned()))?;
        validate_env(name, value)?;
        Ok(EnvVar {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Parses an env file: `NAME=VALUE` lines; blank lines and lines starting with `#` are skipped.
pub fn parse_env_file(text: &str) -> Result<Vec<EnvVar>, ConfigError> {
    text.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(EnvVar::parse)
        .collect()
}

fn validate_env(name: &str, value: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(ConfigError::EnvName(name.to_owned()));
    }
    if value.contains('\0') {
        return Err(ConfigError::EnvValue(name.to_owned()));
    }
    Ok(())
}

/// The guest's process: what the init runs, with which environment, where and as whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    pub argv: Vec<String>,
    /// In order; a later entry for the same name replaces the earlier one.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
}

impl GuestProcess {
    /// Checks everything the guest must be able to receive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(ConfigError::NoCommand);
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(ConfigError::Argument(i));
        }
        for (name, value) in &self.env {
            validate_env(name, value)?;
        }
        if !self.workdir.starts_with('/') || self.workdir.contains('\0') {
            return Err(ConfigError::Workdir(self.workdir.clone()));
        }
        Ok(())
    }

    /// The environment with duplicates resolved (last wins, first position kept) and `PATH`
    /// defaulted.
    pub fn effective_env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(self.env.len() + 1);
        for (name, value) in &self.env {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => out.push((name.clone(), value.clone())),
            }
        }
        if !out.iter().any(|(n, _)| n == "PATH") {
            out.push(("PATH".to_owned(), DEFAULT_GUEST_PATH.to_owned()));
        }
        out
    }

    /// The value of `PATH` the guest will see.
    pub fn guest_path_var(&self) -> String {
        self.effective_env()
            .into_iter()
            .find(|(n, _)| n == "PATH")
            .map(|(_, v)| v)
            .unwrap_or_else(|| DEFAULT_GUEST_PATH.to_owned())
    }

    /// The `/.krun_config.json` for this process.
    pub fn krun_config_file(&self) -> Result<KrunConfigFile, ConfigError> {
        self.validate()?;
        Ok(KrunConfigFile {
            cmd: self.argv.clone(),
            env: self
                .effective_env()
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect(),
            working_dir: self.workdir.clone(),
            uid: self.uid.to_string(),
            gid: self.gid.to_string(),
        })
    }
}

/// The JSON document libkrun's init reads from `/.krun_config.json` (the OCI image config's
/// field names; ids as strings, as init parses them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrunConfigFile {
    #[serde(rename = "Cmd")]
    pub cmd: Vec<String>,
    #[serde(rename = "Env")]
    pub env: Vec<String>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: String,
    pub uid: String,
    pub gid: String,
}

impl KrunConfigFile {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings always serialises")
    }
}

/// A per-bottle root without copying: the read-only `lower` (the cached rootfs) under the
/// bottle's writable `upper` state dir, mounted by the child in its own mount namespace on the
/// root directory. overlayfs keeps the upper layer in `upper/diff` and needs the scratch dir
/// `upper/work` on the same filesystem; `lower` is never written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub lower: PathBuf,
    pub upper: PathBuf,
}

impl Overlay {
    /// Parses `LOWER:UPPER`. overlayfs options cannot carry `,` or `:` in paths.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::ParseOverlay(s.to_owned());
        let (lower, upper) = s.split_once(':').ok_or_else(err)?;
        if lower.is_empty() || upper.is_empty() {
            return Err(err());
        }
        Overlay::new(lower.into(), upper.into()).map_err(|_| err())
    }

    /// An overlay of two paths, refused if overlayfs's options could not carry them (`,`,
    /// `:` or a NUL byte).
    pub fn new(lower: PathBuf, upper: PathBuf) -> Result<Self, ConfigError> {
        let bad = |p: &PathBuf| {
            p.as_os_str()
                .as_encoded_bytes()
                .iter()
                .any(|b| matches!(b, b',' | b':' | b'\0'))
        };
        if bad(&lower) || bad(&upper) {
            return Err(ConfigError::ParseOverlay(format!(
                "{}:{}",
                lower.display(),
                upper.display()
            )));
        }
        Ok(Self { lower, upper })
    }

    pub fn diff_dir(&self) -> PathBuf {
        self.upper.join("diff")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.upper.join("work")
    }

    /// The overlayfs mount options.
    pub fn mount_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.diff_dir().display(),
            self.work_dir().display()
        )
    }
}

/// What the child does once confined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildMode {
    /// Configure libkrun and boot the guest.
    Boot,
    /// Try each connection from inside the confinement and report (`krbottle debug net-probe`).
    NetProbe { targets: Vec<SocketAddr> },
}

/// Everything the `__vmm` child needs, sent by the parent as JSON over a pipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub cpus: u8,
    pub memory_mib: u32,
    pub root: PathBuf,
    /// When set, `root` is the mount point of this overlay (mounted by the child).
    pub overlay: Option<Overlay>,
    pub shares: Vec<Share>,
    /// Host directories bind-mounted into the root at the same path, in the child's mount
    /// namespace, before anything else is done there (`start --share-cwd`).
    #[serde(default)]
    pub binds: Vec<PathBuf>,
    /// Files written into the root before boot (`crate::provision`), after the overlay and the
    /// binds are mounted.
    #[serde(default)]
    pub provision: Vec<crate::provision::ProvisionFile>,
    pub process: GuestProcess,
    /// The guest ports to listen on in the child's network namespace; the parent relays each
    /// to its upstream (Linux).
    pub guest_ports: Vec<u16>,
    /// Host loopback ports the VMM dials itself on the guest's behalf, the only network its
    /// Seatbelt profile allows (macOS: the bundle's published ports; no relay).
    #[serde(default)]
    pub direct_ports: Vec<u16>,
    /// Explicit `libkrunfw` to load before creating the context (`KRBOTTLE_LIBKRUNFW`).
    pub libkrunfw: Option<PathBuf>,
    pub mode: ChildMode,
    /// Why this machine cannot boot the guest, when the caller asked not to try: the child
    /// then makes every libkrun call but `krun_start_enter`, and ends.
    #[serde(default)]
    pub stop_before_enter: Option<String>,
}

/// The host loopback ports the guest dials itself for `endpoints`, where there is no relay
/// (macOS): each must be `PORT=127.0.0.1:PORT` (or `localhost`), the guest seeing the host's
/// loopback through TSI.
pub fn direct_ports(endpoints: &[Endpoint]) -> Result<Vec<u16>, ConfigError> {
    endpoints
        .iter()
        .map(|e| {
            let loopback = matches!(e.host.as_str(), "127.0.0.1" | "localhost");
            if loopback && e.guest_port == e.port {
                Ok(e.port)
            } else {
                Err(ConfigError::NotDirect(format!(
                    "{}={}",
                    e.guest_port,
                    e.upstream()
                )))
            }
        })
        .collect()
}

/// Rejects a guest port given twice.
pub fn check_unique_guest_ports(ports: &[u16]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for &port in ports {
        if !seen.insert(port) {
            return Err(ConfigError::DuplicateGuestPort(port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let ok = [
            ("8888=127.0.0.1:41234", 8888, "127.0.0.1", 41234),
            ("9418=localhost:1", 9418, "localhost", 1),
            ("80=[::1]:8080", 80, "::1", 8080),
        ];
        for (s, g, h, p) in ok {
            let e = Endpoint::parse(s).unwrap();
            assert_eq!((e.guest_port, e.host.as_str(), e.port), (g, h, p), "{s}");
        }
        let bad = [
            "",
            "8888",
            "8888=",
            "8888=host",
            "x=h:1",
            "0=h:1",
            "1=h:0",
            "1=h:70000",
            "1=:5",
            "1=::1:5",
            "1=[::1:5",
            "70000=h:1",
            "1=a b:2",
        ];
        for s in bad {
            assert_eq!(
                Endpoint::parse(s),
                Err(ConfigError::ParseEndpoint(s.to_owned())),
                "{s}"
            );
        }
        assert_eq!(
            Endpoint::parse("80=[::1]:8080").unwrap().upstream(),
            "[::1]:8080"
        );
    }

    #[test]
    fn direct_endpoints_are_loopback_ports_given_as_themselves() {
        let parse = |s: &str| Endpoint::parse(s).unwrap();
        assert_eq!(
            direct_ports(&[parse("3128=127.0.0.1:3128"), parse("9=localhost:9")]),
            Ok(vec![3128, 9])
        );
        for bad in [
            "8888=127.0.0.1:3128",
            "80=10.0.0.1:80",
            "80=[::1]:80",
            "80=example.com:80",
        ] {
            assert_eq!(
                direct_ports(&[parse(bad)]),
                Err(ConfigError::NotDirect(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_guest_ports() {
        assert!(check_unique_guest_ports(&[1, 3]).is_ok());
        assert_eq!(
            check_unique_guest_ports(&[1, 1]),
            Err(ConfigError::DuplicateGuestPort(1))
        );
    }

    #[test]
    fn shares() {
        let s = Share::parse("/srv/x:/mnt/x:ro").unwrap();
        assert_eq!(
            (s.host.to_str().unwrap(), s.guest.as_str(), s.read_only),
            ("/srv/x", "/mnt/x", true)
        );
        let s = Share::parse("rel:/w").unwrap();
        assert_eq!(
            (s.host.to_str().unwrap(), s.guest.as_str(), s.read_only),
            ("rel", "/w", false)
        );
        for bad in ["", "/a", "/a:b", ":/b", "/a:/b:/c", "/a:/b:rw"] {
            assert!(Share::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlays() {
        let o = Overlay::parse("/cache/abc:/bottles/b1").unwrap();
        assert_eq!(
            o.mount_options(),
            "lowerdir=/cache/abc,upperdir=/bottles/b1/diff,workdir=/bottles/b1/work"
        );
        for bad in ["", "/a", ":/b", "/a:", "/a:/b:/c", "/a,b:/c", "/a:/b,c"] {
            assert_eq!(
                Overlay::parse(bad),
                Err(ConfigError::ParseOverlay(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn users() {
        assert_eq!(
            GuestUser::parse("1000:100"),
            Ok(GuestUser {
                uid: 1000,
                gid: 100
            })
        );
        for bad in ["", "1000", "a:b", "1:-1", ":1"] {
            assert!(GuestUser::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_entries() {
        type Case = (
            &'static str,
            Result<(&'static str, &'static str), ConfigError>,
        );
        let table: &[Case] = &[
            ("A=1", Ok(("A", "1"))),
            ("A=", Ok(("A", ""))),
            ("A=b=c", Ok(("A", "b=c"))),
            ("Q='\" x", Ok(("Q", "'\" x"))),
            ("=x", Err(ConfigError::EnvName(String::new()))),
            ("A\0B=x", Err(ConfigError::EnvName("A\0B".into()))),
            ("A=x\0", Err(ConfigError::EnvValue("A".into()))),
            ("NOEQ", Err(ConfigError::ParseEnv("NOEQ".into()))),
        ];
        for (s, want) in table {
            let got = EnvVar::parse(s);
            let got = got
                .as_ref()
                .map(|e| (e.name.as_str(), e.value.as_str()))
                .map_err(Clone::clone);
            assert_eq!(&got, want, "{s:?}");
        }
    }

    #[test]
    fn env_file() {
        let text = "# comment\n\nA=1\r\n  # indented comment\nB=x y 'z'\n";
        assert_eq!(
            parse_env_file(text).unwrap(),
            vec![
                EnvVar::parse("A=1").unwrap(),
                EnvVar::parse("B=x y 'z'").unwrap()
            ]
        );
        assert_eq!(
            parse_env_file("A=1\nbad\n"),
            Err(ConfigError::ParseEnv("bad".into()))
        );
    }

    fn process() -> GuestProcess {
        GuestProcess {
            argv: vec![
                "sh".into(),
                "-c".into(),
                r#"echo "it's" 'a "test"'  x"#.into(),
            ],
            env: (0..100)
                .map(|i| (format!("VAR_{i}"), format!("v='{i}' \"q\" a=b")))
                .collect(),
            workdir: "/home/agent/work dir".into(),
            uid: 1000,
            gid: 1001,
        }
    }

    #[test]
    fn config_file_carries_everything_intact() {
        let p = process();
        let file = p.krun_config_file().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&file.to_json()).unwrap();
        assert_eq!(json["Cmd"], serde_json::json!(p.argv));
        let env = json["Env"].as_array().unwrap();
        assert_eq!(env.len(), 101, "100 variables and the default PATH");
        for (i, entry) in env.iter().take(100).enumerate() {
            assert_eq!(entry, &format!("VAR_{i}=v='{i}' \"q\" a=b"));
        }
        assert_eq!(env[100], format!("PATH={DEFAULT_GUEST_PATH}"));
        assert_eq!(json["WorkingDir"], "/home/agent/work dir");
        assert_eq!(json["uid"], "1000");
        assert_eq!(json["gid"], "1001");
    }

    #[test]
    fn env_duplicates_last_wins_and_path_kept() {
        let mut p = process();
        p.env = vec![
            ("A".into(), "1".into()),
            ("PATH".into(), "/x".into()),
            ("A".into(), "2".into()),
        ];
        assert_eq!(
            p.effective_env(),
            vec![("A".into(), "2".into()), ("PATH".into(), "/x".into())]
        );
        assert_eq!(p.guest_path_var(), "/x");
    }

    #[test]
    fn invalid_processes_are_rejected() {
        type Case = (fn(&mut GuestProcess), ConfigError);
        let cases: Vec<Case> = vec![
            (|p| p.argv.clear(), ConfigError::NoCommand),
            (|p| p.argv = vec![String::new()], ConfigError::NoCommand),
            (|p| p.argv.push("a\0".into()), ConfigError::Argument(3)),
            (
                |p| p.env.push(("X=Y".into(), "1".into())),
                ConfigError::EnvName("X=Y".into()),
            ),
            (
                |p| p.env.push((String::new(), "1".into())),
                ConfigError::EnvName(String::new()),
            ),
            (
                |p| p.env.push(("X".into(), "\0".into())),
                ConfigError::EnvValue("X".into()),
            ),
            (
                |p| p.workdir = "rel".into(),
                ConfigError::Workdir("rel".into()),
            ),
        ];
        for (mutate, want) in cases {
            let mut p = process();
            mutate(&mut p);
            assert_eq!(p.krun_config_file(), Err(want));
        }
    }

    #[test]
    fn vm_config_round_trips_as_json() {
        let cfg = VmConfig {
            cpus: 2,
            memory_mib: 512,
            root: "/r".into(),
            overlay: Some(Overlay::parse("/l:/u").unwrap()),
            shares: vec![Share::parse("/a:/b:ro").unwrap()],
            binds: vec!["/home/me/project".into()],
            provision: Vec::new(),
            process: process(),
            guest_ports: vec![8888],
            direct_ports: vec![52001],
            libkrunfw: None,
            mode: ChildMode::NetProbe {
                targets: vec!["127.0.0.1:2".parse().unwrap()],
            },
            stop_before_enter: Some("no hypervisor".into()),
        };
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
