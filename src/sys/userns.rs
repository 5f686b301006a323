//! Re-executed children of this binary in new namespaces, with a user-id mapping.
//!
//! The parent [`spawn`]s the child with a handshake socket; the child calls
//! [`enter_from_env`] first thing in its `main`, which `unshare`s a user namespace (plus a
//! network and/or mount namespace when asked) and waits. The parent then writes the child's uid
//! and gid maps and releases it. Unsharing in the child itself (not in `pre_exec`) matters: the
//! capabilities a process gets in a new user namespace are lost at `execve` while its uid is
//! still unmapped. The child must be single-threaded when it calls `enter_from_env`.
//!
//! Mappings ([`IdMapping`]): as root, the identity over the whole id space (files keep their
//! real ids); as another user, namespace id 0 is the user and 1..=N the user's subordinate range
//! from `/etc/subuid`/`/etc/subgid`, written by the setuid `newuidmap`/`newgidmap` helpers.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};

use crate::env_vars;
pub use crate::sys::inherit::{inherit_fd, take_inherited_fd};

/// Handshake bytes: child → parent "unshared", parent → child "maps written".
const UNSHARED: u8 = b'U';
const MAPPED: u8 = b'M';

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error(
        "No subordinate {kind} range for user `{user}` in {file}; add one with `usermod --add-sub{kind}s 100000-165535 {user}`"
    )]
    NoSubordinateRange {
        kind: &'static str,
        user: String,
        file: &'static str,
    },
    #[error("Could not read {0}")]
    ReadSubids(&'static str, #[source] std::io::Error),
    #[error("Could not create the namespace handshake socket")]
    Socket(#[source] std::io::Error),
    #[error("Could not start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("The child exited before creating its namespaces: {0}")]
    ChildDied(String),
    #[error("Could not write the id map of the child with {0}; is the `uidmap` package installed?")]
    WriteMap(String, #[source] std::io::Error),
    #[error("{0} refused the id map: {1}")]
    MapRefused(String, String),
    #[error(
        "Could not create new namespaces (unshare); user namespaces may be disabled (see `krbottle doctor`)"
    )]
    Unshare(#[source] std::io::Error),
    #[error("Namespace handshake with the parent failed")]
    Handshake(#[source] std::io::Error),
    #[error("Malformed {name} value `{0}`", name = env_vars::KRBOTTLE_NS_HANDSHAKE)]
    BadHandshakeEnv(String),
}

/// One line of a uid or gid map: `count` ids starting at `inside` map to ids starting at
/// `outside` in the parent namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a new user namespace, and who may write them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Written with `newuidmap`/`newgidmap` (non-root) rather than directly to `/proc` (root).
    pub via_helpers: bool,
}

impl IdMapping {
    /// The whole id space mapped onto itself (for root).
    pub fn identity() -> Self {
        let all = vec![IdRange {
            inside: 0,
            outside: 0,
            count: u32::MAX,
        }];
        Self {
            uids: all.clone(),
            gids: all,
            via_helpers: false,
        }
    }

    /// The mapping for the calling user: identity as root, subordinate ranges otherwise.
    pub fn for_current_user() -> Result<Self, UsernsError> {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        if uid == 0 {
            return Ok(Self::identity());
        }
        let user = user_name(uid).unwrap_or_else(|| uid.to_string());
        let read = |f: &'static str| {
            std::fs::read_to_string(f).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(String::new()),
                _ => Err(UsernsError::ReadSubids(f, e)),
            })
        };
        Self::from_subids(uid, gid, &user, &read(SUBUID)?, &read(SUBGID)?)
    }

    /// Namespace id 0 → (`uid`, `gid`); 1..=N → the first subordinate range of `user` (by name
    /// or numeric id) in the given `/etc/subuid` and `/etc/subgid` texts.
    pub fn from_subids(
        uid: u32,
        gid: u32,
        user: &str,
        subuid: &str,
        subgid: &str,
    ) -> Result<Self, UsernsError> {
        let range = |text: &str, id: u32, kind, file| {
            subordinate_range(text, user, id).ok_or_else(|| UsernsError::NoSubordinateRange {
                kind,
                user: user.to_owned(),
                file,
            })
        };
        let (us, uc) = range(subuid, uid, "uid", SUBUID)?;
        let (gs, gc) = range(subgid, gid, "gid", SUBGID)?;
        Ok(Self {
            uids: vec![
                IdRange {
                    inside: 0,
                    outside: uid,
                    count: 1,
                },
                IdRange {
                    inside: 1,
                    outside: us,
                    count: uc,
                },
            ],
            gids: vec![
                IdRange {
                    inside: 0,
                    outside: gid,
                    count: 1,
                },
                IdRange {
                    inside: 1,
                    outside: gs,
                    count: gc,
                },
            ],
            via_helpers: true,
        })
    }
}

const SUBUID: &str = "/etc/subuid";
const SUBGID: &str = "/etc/subgid";

/// The first `start:count` for `user` (or its numeric `id`) in a subid file.
fn subordinate_range(text: &str, user: &str, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who != id.to_string() {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        (count > 0).then_some((start, count))
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// Which namespaces the child creates besides its user namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub net: bool,
    pub mount: bool,
}

impl Namespaces {
    fn encode(self) -> &'static str {
        match (self.net, self.mount) {
            (false, false) => "user",
            (true, false) => "user,net",
            (false, true) => "user,mnt",
            (true, true) => "user,net,mnt",
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let mut ns = Self::default();
        let mut has_user = false;
        for part in s.split(',') {
            match part {
                "user" => has_user = true,
                "net" => ns.net = true,
                "mnt" => ns.mount = true,
                _ => return None,
            }
        }
        has_user.then_some(ns)
    }
}

/// Spawns `cmd` (a re-execution of this binary whose `main` calls [`enter_from_env`]), waits
/// until it has unshared its namespaces, writes its id maps, and releases it.
pub fn spawn(cmd: &mut Command, ns: Namespaces, mapping: &IdMapping) -> Result<Child, UsernsError> {
    let (mut ours, theirs) = UnixStream::pair().map_err(UsernsError::Socket)?;
    let theirs: OwnedFd = theirs.into();
    let fd = inherit_fd(cmd, &theirs);
    cmd.env(
        env_vars::KRBOTTLE_NS_HANDSHAKE,
        format!("{fd}:{}", ns.encode()),
    );
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| UsernsError::Spawn(program, e))?;
    drop(theirs);

    let result = (|| {
        let mut byte = [0u8; 1];
        match ours.read(&mut byte) {
            Ok(1) if byte[0] == UNSHARED => {}
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(UsernsError::ChildDied(status));
            }
            Err(e) => return Err(UsernsError::Handshake(e)),
        }
        write_maps(child.id(), mapping)?;
        ours.write_all(&[MAPPED]).map_err(UsernsError::Handshake)
    })();
    if let Err(err) = result {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(child)
}

fn write_maps(pid: u32, mapping: &IdMapping) -> Result<(), UsernsError> {
    if mapping.via_helpers {
        run_helper("newuidmap", pid, &mapping.uids)?;
        run_helper("newgidmap", pid, &mapping.gids)
    } else {
        write_proc_map(pid, "uid_map", &mapping.uids)?;
        write_proc_map(pid, "gid_map", &mapping.gids)
    }
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn write_proc_map(pid: u32, file: &str, ranges: &[IdRange]) -> Result<(), UsernsError> {
    let path = format!("/proc/{pid}/{file}");
    // One write(2): the kernel accepts a map only in a single write.
    std::fs::write(&path, map_text(ranges)).map_err(|e| UsernsError::WriteMap(path, e))
}

fn run_helper(helper: &str, pid: u32, ranges: &[IdRange]) -> Result<(), UsernsError> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let out = cmd
        .output()
        .map_err(|e| UsernsError::WriteMap(helper.to_owned(), e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(UsernsError::MapRefused(helper.to_owned(), msg));
    }
    Ok(())
}

/// In a child started by [`spawn`]: creates the namespaces, waits for the parent to map ids,
/// and returns which namespaces it entered. `Ok(None)` when this process was not started by
/// `spawn`. Must run while the process is single-threaded.
pub fn enter_from_env() -> Result<Option<Namespaces>, UsernsError> {
    let Ok(value) = std::env::var(env_vars::KRBOTTLE_NS_HANDSHAKE) else {
        return Ok(None);
    };
    let bad = || UsernsError::BadHandshakeEnv(value.clone());
    let (fd, ns) = value.split_once(':').ok_or_else(bad)?;
    let fd: i32 = fd.parse().map_err(|_| bad())?;
    let ns = Namespaces::decode(ns).ok_or_else(bad)?;
    let mut sock = take_inherited_fd(fd).ok_or_else(bad)?;

    let mut flags = rustix::thread::UnshareFlags::NEWUSER;
    if ns.net {
        flags |= rustix::thread::UnshareFlags::NEWNET;
    }
    if ns.mount {
        flags |= rustix::thread::UnshareFlags::NEWNS;
    }
    // SAFETY: the flags do not include FILES, the only flag that can invalidate descriptors
    // other threads hold; and the caller runs this while single-threaded, as NEWUSER requires.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| UsernsError::Unshare(e.into()))?;
    sock.write_all(&[UNSHARED])
        .map_err(UsernsError::Handshake)?;
    let mut byte = [0u8; 1];
    sock.read_exact(&mut byte).map_err(UsernsError::Handshake)?;
    if byte[0] != MAPPED {
        return Err(UsernsError::Handshake(std::io::Error::other(
            "unexpected handshake byte",
        )));
    }
    Ok(Some(ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, RawFd};

    const SUBUID_TEXT: &str = "alice:100000:65536\n1001:200000:65536\nbob:300000:0\n";

    /// Whether a shell spawned from `cmd` sees descriptor `fd` open.
    fn child_sees(mut cmd: Command, fd: RawFd) -> bool {
        cmd.arg("-c").arg(format!("[ -e /proc/$$/fd/{fd} ]"));
        cmd.status().expect("sh runs").success()
    }

    #[test]
    fn inherited_fd_reaches_only_its_own_child() {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let theirs: OwnedFd = theirs.into();
        let mut cmd = Command::new("sh");
        let fd = inherit_fd(&mut cmd, &theirs);
        assert_eq!(fd, theirs.as_raw_fd());
        // In this process the descriptor stays close-on-exec, so no other spawn inherits it.
        let flags = rustix::io::fcntl_getfd(&theirs).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(
            !child_sees(Command::new("sh"), fd),
            "a bystander inherited it"
        );
        assert!(child_sees(cmd, fd), "the intended child did not inherit it");
    }

    #[test]
    fn subordinate_ranges() {
        let table = [
            ("alice", 1000, Some((100000, 65536))),
            ("carol", 1001, Some((200000, 65536))),
            ("bob", 1002, None),
            ("dave", 1003, None),
        ];
        for (user, id, want) in table {
            assert_eq!(subordinate_range(SUBUID_TEXT, user, id), want, "{user}");
        }
    }

    #[test]
    fn subid_mapping_puts_the_user_at_zero() {
        let m = IdMapping::from_subids(1000, 1000, "alice", SUBUID_TEXT, SUBUID_TEXT).unwrap();
        assert_eq!(map_text(&m.uids), "0 1000 1\n1 100000 65536\n");
        assert!(m.via_helpers);
        let err = IdMapping::from_subids(1003, 1003, "dave", SUBUID_TEXT, "").unwrap_err();
        assert!(err.to_string().contains("usermod --add-subuids"), "{err}");
        assert_eq!(map_text(&IdMapping::identity().uids), "0 0 4294967295\n");
    }

    #[test]
    fn namespace_sets_round_trip() {
        for net in [false, true] {
            for mount in [false, true] {
                let ns = Namespaces { net, mount };
                assert_eq!(Namespaces::decode(ns.encode()), Some(ns));
            }
        }
        assert_eq!(Namespaces::decode("net"), None);
        assert_eq!(Namespaces::decode("user,pid"), None);
    }
}
