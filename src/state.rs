//! Per-bottle state on the host: a bottle's writable root, its bundle files and its lock.
//!
//! Layout under the state root (`KRBOTTLE_STATE_DIR`, default the user data dir + `krbottle`):
//! ```text
//! bottles/<name>/root/diff/    the overlay's upper layer: everything the guest changed (Linux)
//! bottles/<name>/root/work/    overlayfs's scratch dir, on the same filesystem as diff/
//! bottles/<name>/rootfs/       a private copy instead of an overlay (macOS: one `clonefile` of
//!                              the cached tree, or a per-file clone or copy across volumes)
//! bottles/<name>/bundle/       the bundle's config, CA and up record (`bundle::container`)
//! bottles/<name>/bottle.json   the bottle's record (agent, image, state, the running pid)
//! bottles/<name>/logs/         the bundle's logs of past runs, saved at teardown
//! bottles/<name>/queue/        the approval queue the supervise daemon and `krbottle approve`
//!                              share (`queue`); the guest never sees it
//! bottles/<name>/lock          flock held while the bottle runs
//! ```
//! A bottle exists once its record does; a directory without one is a start that failed before
//! it got that far (`gc` removes it). A bottle is running exactly while its lock is held: the
//! kernel drops a dead process's lock, so a crash never leaves a bottle "running".
//! The cached image rootfs is never written: a bottle's changes live only in its own dir, so
//! stopping a bottle keeps its state and starting it again resumes it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::image::clone::{CloneError, WritableRoot, copy_tree};
use crate::{env_vars, lockfile};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "Bad bottle name `{0}`: names are 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit"
    )]
    BadName(String),
    #[error("Cannot create the bottle directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Bottle `{0}` is already running (its lock is held); stop it first")]
    Busy(String),
    #[error("Cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read bottle `{bottle}`'s record {}; remove the bottle with `krbottle rm {bottle}`", path.display())]
    ReadRecord {
        bottle: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write bottle `{bottle}`'s record")]
    WriteRecord {
        bottle: String,
        #[source]
        source: io::Error,
    },
    #[error("Cannot list the bottles in {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot make bottle `{bottle}`'s private copy of its root filesystem")]
    Copy {
        bottle: String,
        #[source]
        source: CloneError,
    },
    #[error(
        "Cannot share {} with the guest: it holds krbottle's state dir {} (the approval queues, the bottles' CA keys); work from a directory apart from it, or move the state with KRBOTTLE_STATE_DIR",
        dir.display(),
        root.display()
    )]
    SharedState { dir: PathBuf, root: PathBuf },
}

/// The directory holding every bottle's state.
#[derive(Clone, Debug)]
pub struct StateRoot {
    root: PathBuf,
}

impl StateRoot {
    /// `KRBOTTLE_STATE_DIR`, else `<user data dir>/krbottle`.
    pub fn open_default() -> Self {
        let root = match std::env::var_os(env_vars::KRBOTTLE_STATE_DIR) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::data_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("krbottle"),
        };
        StateRoot { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        StateRoot { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Refuses `dir` as a directory shared with a guest when the state dir is inside it or it is
    /// inside the state dir: the guest could then write answers into an approval queue, or
    /// read a bottle's CA key. Paths are compared after resolving links.
    pub fn refuse_share(&self, dir: &Path) -> Result<(), StateError> {
        if crate::sys::fs::nested(dir, &self.root) {
            return Err(StateError::SharedState {
                dir: dir.to_path_buf(),
                root: self.root.clone(),
            });
        }
        Ok(())
    }

    /// The names of every bottle directory, sorted.
    pub fn names(&self) -> Result<Vec<String>, StateError> {
        let dir = self.root.join("bottles");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::List { path: dir, source }),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::manifest::is_valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The dirs of bottle `name` (not created yet).
    pub fn bottle(&self, name: &str) -> Result<BottleDirs, StateError> {
        if !crate::manifest::is_valid_name(name) {
            return Err(StateError::BadName(name.to_string()));
        }
        Ok(BottleDirs {
            name: name.to_string(),
            dir: self.root.join("bottles").join(name),
        })
    }
}

/// One bottle's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BottleDirs {
    name: String,
    dir: PathBuf,
}

impl BottleDirs {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The overlay's upper state: `diff/` and `work/` inside.
    pub fn overlay_upper(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The private copy used where there is no overlay.
    pub fn private_rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn bundle_dir(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    /// The bottle's approval queue (`crate::queue`), bind-mounted into its bundle.
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// git-gate's bare repositories (one per upstream), bind-mounted into the bundle.
    pub fn git_dir(&self) -> PathBuf {
        self.dir.join("git")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the bundle's logs of past runs are kept.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }

    /// The bottle's record; `None` when the bottle does not exist (yet).
    pub fn read_record(&self) -> Result<Option<BottleRecord>, StateError> {
        let path = self.record_path();
        crate::sys::fs::read_json(&path).map_err(|source| StateError::ReadRecord {
            bottle: self.name.clone(),
            path,
            source,
        })
    }

    /// Writes the bottle's record atomically.
    pub fn write_record(&self, record: &BottleRecord) -> Result<(), StateError> {
        let err = |source| StateError::WriteRecord {
            bottle: self.name.clone(),
            source,
        };
        mkdir(&self.dir)?;
        let text = serde_json::to_vec_pretty(record).map_err(|e| err(e.into()))?;
        crate::sys::fs::write_atomic(&self.record_path(), &text, 0o600).map_err(err)
    }

    /// Whether a krbottle process holds the bottle's lock (it is running).
    pub fn is_running(&self) -> bool {
        let path = self.dir.join("lock");
        path.exists() && matches!(lockfile::try_lock_exclusive(&path), Ok(None))
    }

    /// Takes the bottle's lock for as long as the returned file lives; fails at once when
    /// another process holds it.
    pub fn lock(&self) -> Result<File, StateError> {
        mkdir(&self.dir)?;
        let path = self.dir.join("lock");
        match lockfile::try_lock_exclusive(&path) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => Err(StateError::Busy(self.name.clone())),
            Err(source) => Err(StateError::Lock { path, source }),
        }
    }

    /// The bottle's own writable root over the cached `image_rootfs`, created on first use and
    /// kept afterwards. On Linux an overlay the VMM child mounts (nothing is copied); elsewhere a
    /// private copy: one `clonefile` of the whole tree where the file system allows it
    /// (`sys::fs::clone_tree`: APFS on one volume), else [`copy_tree`], which clones or copies
    /// file by file. Either way the files keep the image's ownership in the
    /// `user.containers.override_stat` xattrs the unpacker wrote.
    pub fn writable_root(
        &self,
        image_rootfs: &Path,
        progress: &ProgressBar,
    ) -> Result<WritableRoot, StateError> {
        if cfg!(target_os = "linux") {
            let upper = self.overlay_upper();
            let diff = upper.join("diff");
            if !diff.exists() {
                // The overlay's root directory takes its mode from the upper layer's: the
                // image's own (0700 would lock every user but root out of `/`).
                let mode = fs::metadata(image_rootfs)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o755);
                mkdir(&upper)?;
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&diff)
                    .and_then(|()| fs::set_permissions(&diff, fs::Permissions::from_mode(mode)))
                    .map_err(|source| StateError::Create {
                        path: diff.clone(),
                        source,
                    })?;
            }
            mkdir(&upper.join("work"))?;
            return Ok(WritableRoot::Overlay {
                lower: image_rootfs.to_path_buf(),
                upper,
            });
        }
        let root = self.private_rootfs();
        if !root.exists() {
            mkdir(&self.dir)?;
            let cloned = match crate::sys::fs::clone_tree(image_rootfs, &root) {
                Ok(cloned) => cloned,
                Err(source) => {
                    // A clone that failed part way must not pass for the bottle's root later.
                    let _ = crate::image::tree::remove_tree(&root);
                    return Err(StateError::Copy {
                        bottle: self.name.clone(),
                        source: CloneError::Write { path: root, source },
                    });
                }
            };
            if !cloned {
                copy_tree(image_rootfs, &root, progress).map_err(|source| StateError::Copy {
                    bottle: self.name.clone(),
                    source,
                })?;
            }
        }
        Ok(WritableRoot::Copy { root })
    }
}

/// The record's file name in the bottle's dir.
const RECORD_FILE: &str = "bottle.json";

/// What `bottle.json` records: enough to list, resume and remove the bottle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BottleRecord {
    pub name: String,
    pub agent: String,
    pub bottle: String,
    /// The manifest the bottle was started from (`resume` reads it again).
    pub manifest: PathBuf,
    /// The image as the manifest names it, and the ID it had at the last start.
    pub image: String,
    pub image_id: String,
    pub ownership: crate::image::Ownership,
    /// Seconds since the epoch.
    pub created: u64,
    pub started: u64,
    /// The command given after `--` at the first start (kept for `resume`), if any.
    #[serde(default)]
    pub argv: Vec<String>,
    /// How the current directory was given to the guest (kept for `resume`).
    #[serde(default)]
    pub cwd: crate::plan::Cwd,
    /// The krbottle process running the bottle, while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The bundle's published endpoints, while it runs.
    #[serde(default)]
    pub endpoints: BTreeMap<String, SocketAddr>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mkdir(path: &Path) -> Result<(), StateError> {
    crate::sys::fs::create_private_dir(path).map_err(|source| StateError::Create {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_overlay_upper_layer_has_the_image_roots_mode_so_every_user_can_enter_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        fs::create_dir(&image).unwrap();
        fs::set_permissions(&image, fs::Permissions::from_mode(0o755)).unwrap();
        let dirs = StateRoot::at(dir.path().join("state")).bottle("b").unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let WritableRoot::Overlay { upper, .. } = dirs.writable_root(&image, &bar).unwrap() else {
            panic!("an overlay on Linux");
        };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&upper.join("diff")), 0o755);
        // Kept as it is on a resume, whatever the guest made of it.
        fs::set_permissions(upper.join("diff"), fs::Permissions::from_mode(0o750)).unwrap();
        dirs.writable_root(&image, &bar).unwrap();
        assert_eq!(mode(&upper.join("diff")), 0o750);
    }

    #[test]
    fn names_are_checked_before_they_become_paths() {
        let state = StateRoot::at("/state");
        for bad in ["", "../x", "a/b", "Upper", ".hidden", &"x".repeat(64)] {
            assert!(
                matches!(state.bottle(bad), Err(StateError::BadName(_))),
                "{bad}"
            );
        }
        let b = state.bottle("agent-1").unwrap();
        assert_eq!(b.dir(), Path::new("/state/bottles/agent-1"));
        assert_eq!(b.bundle_dir(), Path::new("/state/bottles/agent-1/bundle"));
        assert_eq!(b.queue_dir(), Path::new("/state/bottles/agent-1/queue"));
    }

    #[test]
    fn no_share_reaches_the_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let project = home.join("project");
        fs::create_dir_all(&project).unwrap();
        std::os::unix::fs::symlink(&home, tmp.path().join("home-link")).unwrap();
        let state = StateRoot::at(home.join(".local/share/krbottle"));
        for bad in [
            home.clone(),
            tmp.path().join("home-link"),
            home.join(".local/share/krbottle"),
            home.join(".local/share/krbottle/bottles/b/queue"),
            PathBuf::from("/"),
        ] {
            assert!(
                matches!(
                    state.refuse_share(&bad),
                    Err(StateError::SharedState { .. })
                ),
                "{}",
                bad.display()
            );
        }
        state.refuse_share(&project).unwrap();
        state
            .refuse_share(&home.join(".local/share/krbottle-other"))
            .unwrap();
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let b = StateRoot::at(tmp.path()).bottle("b").unwrap();
        let held = b.lock().unwrap();
        assert!(matches!(b.lock(), Err(StateError::Busy(_))));
        drop(held);
        b.lock().unwrap();
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn linux_writable_root_is_an_overlay_plan_and_copies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("etc")).unwrap();
        fs::write(image.join("etc/hostname"), "img").unwrap();
        let b = StateRoot::at(tmp.path().join("state")).bottle("b").unwrap();
        let root = b.writable_root(&image, &ProgressBar::hidden()).unwrap();
        match root {
            WritableRoot::Overlay { lower, upper } => {
                assert_eq!(lower, image);
                assert!(upper.join("diff").is_dir() && upper.join("work").is_dir());
                assert_eq!(fs::read_dir(upper.join("diff")).unwrap().count(), 0);
            }
            other => panic!("expected an overlay on Linux, got {other:?}"),
        }
        // Asking again keeps what is there (resume).
        fs::write(b.overlay_upper().join("diff/changed"), "x").unwrap();
        b.writable_root(&image, &ProgressBar::hidden()).unwrap();
        assert!(b.overlay_upper().join("diff/changed").exists());
    }
}
