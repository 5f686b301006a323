//! The `userns` ownership mode: unpack as an unprivileged user with the image's ids.
//!
//! A non-root user cannot `chown` files to other ids, but inside a user namespace mapped from
//! its `/etc/subuid` and `/etc/subgid` ranges (namespace id 0 = the user, 1..=N = the
//! subordinate range) it can. So the unpacker runs in a re-executed child of this binary in such
//! a namespace (`sys::userns`), with the `root` ownership mode: its `lchown`s to the image's ids
//! land on the mapped host ids. The VMM later runs in the same mapping, so the guest sees the
//! image's ids again. The parent streams the save archive into the child's stdin (from Docker or
//! a file: the child needs no access to either) and reads the summary from its stdout.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use indicatif::ProgressBar;

use crate::image::unpack::UnpackSummary;
use crate::sys::userns::{self, IdMapping, Namespaces, UsernsError};

use crate::hidden::{REMOVE_TREE_CHILD, UNPACK_CHILD};

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error("Cannot find this program's own binary to start the unpacker")]
    CurrentExe(#[source] io::Error),
    #[error(transparent)]
    Namespaces(#[from] UsernsError),
    #[error("Cannot feed the image to the unpacker")]
    Feed(#[source] io::Error),
    #[error("The unpacker in the user namespace failed ({status}); its error is above")]
    ChildFailed { status: String },
    #[error("The unpacker in the user namespace returned no summary")]
    Summary(#[source] serde_json::Error),
    #[error("Cannot wait for the unpacker")]
    Wait(#[source] io::Error),
    #[error(
        "This is krbottle's internal {0} child; use `krbottle image unpack --ownership userns` or `krbottle image prune`"
    )]
    NotSpawnedByKrbottle(&'static str),
    #[error(transparent)]
    Unpack(#[from] crate::image::UnpackError),
    #[error("Cannot write the unpack summary")]
    WriteSummary(#[source] serde_json::Error),
    #[error("Cannot delete {}", path.display())]
    Remove {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Deleting {} in the user namespace failed ({status}); its error is above", path.display())]
    RemoveFailed {
        path: std::path::PathBuf,
        status: String,
    },
}

/// Unpacks the save stream `reader` into `dest` from a child in a user namespace with `mapping`.
pub fn unpack_in_userns(
    reader: impl Read,
    dest: &Path,
    mapping: &IdMapping,
    progress: &ProgressBar,
) -> Result<UnpackSummary, RootlessError> {
    let mut child = spawn_child(UNPACK_CHILD, dest, Stdio::piped, mapping)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Read the summary on a thread so a chatty child can never block on a full stdout pipe.
    let summary = std::thread::spawn(move || {
        let mut text = Vec::new();
        stdout.read_to_end(&mut text).map(|_| text)
    });
    let fed = io::copy(&mut progress.wrap_read(reader), &mut stdin).and_then(|_| stdin.flush());
    drop(stdin);
    let status = child.wait().map_err(RootlessError::Wait)?;
    let text = summary
        .join()
        .unwrap_or_else(|_| Ok(Vec::new()))
        .map_err(RootlessError::Feed)?;
    if !status.success() {
        return Err(RootlessError::ChildFailed {
            status: status.to_string(),
        });
    }
    // A broken pipe with a successful child cannot happen (it read to the end); anything else
    // while feeding is a real read error of the source.
    fed.map_err(RootlessError::Feed)?;
    serde_json::from_slice(&text).map_err(RootlessError::Summary)
}

/// Deletes `path`, a tree unpacked in this mode, from a child in a user namespace with
/// `mapping`: its files belong to subordinate ids, which only such a process may delete.
pub fn remove_in_userns(path: &Path, mapping: &IdMapping) -> Result<(), RootlessError> {
    let mut child = spawn_child(REMOVE_TREE_CHILD, path, Stdio::null, mapping)?;
    let status = child.wait().map_err(RootlessError::Wait)?;
    if status.success() {
        Ok(())
    } else {
        Err(RootlessError::RemoveFailed {
            path: path.to_path_buf(),
            status: status.to_string(),
        })
    }
}

/// Starts `krbottle SUBCOMMAND PATH` in a user namespace with `mapping`, its stdin and stdout
/// made by `io` (each call makes a fresh one), its stderr ours.
fn spawn_child(
    subcommand: &str,
    path: &Path,
    io: impl Fn() -> Stdio,
    mapping: &IdMapping,
) -> Result<std::process::Child, RootlessError> {
    let exe = std::env::current_exe().map_err(RootlessError::CurrentExe)?;
    let mut cmd = Command::new(exe);
    cmd.arg(subcommand)
        .arg(path)
        .stdin(io())
        .stdout(io())
        .stderr(Stdio::inherit());
    Ok(userns::spawn(&mut cmd, Namespaces::default(), mapping)?)
}

/// The `__unpack` child: enters the namespace, unpacks stdin into `dest` with real `lchown`s
/// (the namespace's own ids), prints the summary as JSON on stdout.
pub fn unpack_child_main(dest: &Path) -> Result<(), RootlessError> {
    if userns::enter_from_env()?.is_none() {
        return Err(RootlessError::NotSpawnedByKrbottle(UNPACK_CHILD));
    }
    let opts = crate::image::UnpackOptions {
        ownership: crate::image::Ownership::Userns,
        ..Default::default()
    };
    let summary = crate::image::unpack_save(io::stdin(), dest, &opts, &ProgressBar::hidden())?;
    serde_json::to_writer(io::stdout().lock(), &summary).map_err(RootlessError::WriteSummary)
}

/// The `__remove-tree` child: enters the namespace, deletes `path` (a tree unpacked in `userns`
/// mode, whose files are the namespace's own).
pub fn remove_child_main(path: &Path) -> Result<(), RootlessError> {
    if userns::enter_from_env()?.is_none() {
        return Err(RootlessError::NotSpawnedByKrbottle(REMOVE_TREE_CHILD));
    }
    crate::image::tree::remove_tree(path).map_err(|source| RootlessError::Remove {
        path: path.to_path_buf(),
        source,
    })
}
