//! Finding the guest's command in the root filesystem before booting.
//!
//! Resolution happens the way the guest will see it: paths are guest paths, symlinks are
//! followed inside the rootfs (an absolute target restarts at the rootfs, `..` stops at its
//! root), so nothing outside the rootfs is ever looked at.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed in one lookup (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum GuestCommandError {
    #[error(
        "Root filesystem {0} does not exist or is not a directory; unpack an image there first (`krbottle image unpack`)"
    )]
    NoRootfs(PathBuf),
    #[error(
        "Command `{cmd}` not found in {root} (searched PATH={path}); check the image or give the full path"
    )]
    NotFound {
        cmd: String,
        root: PathBuf,
        path: String,
    },
    #[error("Command `{cmd}` in {root} is not an executable file")]
    NotExecutable { cmd: String, root: PathBuf },
    #[error("Could not look up `{0}` in the root filesystem")]
    Lookup(String, #[source] io::Error),
}

/// Resolves a guest path to the host path of what it names, following symlinks inside `root`.
/// `Ok(None)` when it does not exist.
pub fn resolve(root: &Path, guest_path: &str) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<String> = components(guest_path);
    todo.reverse();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." | "" => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let host = done
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = std::fs::read_link(&host)?;
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(components(&target).into_iter().rev());
        } else {
            done.push(c);
        }
    }
    Ok(Some(done.iter().fold(root.to_path_buf(), |p, c| p.join(c))))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

/// Checks that `cmd` names an executable regular file in `root` as the guest would find it:
/// a path containing `/` is taken from `workdir`, a bare name is searched in `path_var`.
/// Returns the guest path found.
pub fn find(
    root: &Path,
    cmd: &str,
    path_var: &str,
    workdir: &str,
) -> Result<String, GuestCommandError> {
    if !root.is_dir() {
        return Err(GuestCommandError::NoRootfs(root.to_path_buf()));
    }
    let candidates: Vec<String> = if cmd.contains('/') {
        if cmd.starts_with('/') {
            vec![cmd.to_owned()]
        } else {
            vec![format!("{}/{cmd}", workdir.trim_end_matches('/'))]
        }
    } else {
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
            .collect()
    };
    let mut found_non_exec = false;
    for guest in candidates {
        let host =
            resolve(root, &guest).map_err(|e| GuestCommandError::Lookup(guest.clone(), e))?;
        let Some(host) = host else { continue };
        match std::fs::metadata(&host) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(guest),
            Ok(_) => found_non_exec = true,
            Err(_) => {}
        }
    }
    if found_non_exec {
        return Err(GuestCommandError::NotExecutable {
            cmd: cmd.to_owned(),
            root: root.to_path_buf(),
        });
    }
    Err(GuestCommandError::NotFound {
        cmd: cmd.to_owned(),
        root: root.to_path_buf(),
        path: path_var.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["usr/bin", "bin", "etc", "work"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(r.join("usr/bin/tool"), PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(r.join("etc/data"), "").unwrap();
        std::fs::write(r.join("work/run.sh"), "").unwrap();
        std::fs::set_permissions(r.join("work/run.sh"), PermissionsExt::from_mode(0o700)).unwrap();
        symlink("/usr/bin/tool", r.join("bin/abs-link")).unwrap();
        symlink("../usr/bin/tool", r.join("bin/rel-link")).unwrap();
        // Would escape to the host's /bin/sh if followed naively.
        symlink("../../../../../../../bin/sh", r.join("bin/escape")).unwrap();
        symlink("/bin/loop", r.join("bin/loop")).unwrap();
        dir
    }

    #[test]
    fn lookups() {
        let root = rootfs();
        let r = root.path();
        let path = "/bin:/usr/bin";
        let table: &[(&str, Result<&str, &str>)] = &[
            ("tool", Ok("/usr/bin/tool")),
            ("abs-link", Ok("/bin/abs-link")),
            ("rel-link", Ok("/bin/rel-link")),
            ("/usr/bin/tool", Ok("/usr/bin/tool")),
            ("./run.sh", Ok("/work/./run.sh")),
            ("escape", Err("not found")),
            ("missing", Err("not found")),
            ("/etc/data", Err("not an executable")),
            ("/etc", Err("not an executable")),
            ("loop", Err("Could not look up")),
        ];
        for (cmd, want) in table {
            let got = find(r, cmd, path, "/work");
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(&g, w, "{cmd}"),
                (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{cmd}: {e}"),
                (w, g) => panic!("{cmd}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn missing_rootfs() {
        let err = find(Path::new("/nonexistent/rootfs"), "sh", "/bin", "/").unwrap_err();
        assert!(matches!(err, GuestCommandError::NoRootfs(_)));
    }
}
