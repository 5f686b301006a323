//! Can this Mac boot a krbottle guest? The macOS facts, and a verdict that is a pure function of
//! them: the parsers and the verdict are built and tested on every OS, the observations are made
//! on macOS only.
//!
//! What a boot needs on macOS: Apple Silicon (libkrun's macOS backend is Hypervisor.framework on
//! arm64), a recent enough macOS, the `com.apple.security.hypervisor` entitlement in krbottle's
//! own code signature (Hypervisor.framework refuses to create a VM without it), and libkrunfw's
//! dylib (the guest kernel). Docker Desktop is reported too: `start` needs it for the bundle.
//! None of this has been run on a Mac by this project.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::env_vars;

/// The oldest macOS krbottle supports: the oldest release libkrun's macOS packages (the
/// `slp/krun` Homebrew tap) are built for. Not checked against libkrun's code here.
pub const MIN_MACOS: (u32, u32) = (14, 0);
/// The entitlement Hypervisor.framework requires of the process.
pub const HYPERVISOR_ENTITLEMENT: &str = "com.apple.security.hypervisor";
/// The file libkrun `dlopen`s for the guest kernel on macOS.
pub const LIBKRUNFW_DYLIB: &str = "libkrunfw.5.dylib";
/// Where Homebrew puts libraries: Apple Silicon, then Intel prefixes.
const HOMEBREW_LIBS: &[&str] = &["/opt/homebrew/lib", "/usr/local/lib"];

/// How to get libkrunfw on macOS.
pub const LIBKRUNFW_HINT: &str = "install it with `brew tap slp/krun && brew install libkrunfw`, put the packaged lib/libkrunfw.5.dylib beside krbottle's bin/, or point KRBOTTLE_LIBKRUNFW at libkrunfw.5.dylib";
/// How to get the entitlement into the signature.
pub const ENTITLEMENT_HINT: &str = "sign krbottle with it: `scripts/sign-macos.sh <path of krbottle>` (macos/krbottle.entitlements)";

/// What doctor observed on this Mac.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    /// `Ok(version)` of macOS (`sw_vers -productVersion`), or why it is unknown.
    pub macos: Result<String, String>,
    /// The machine (`uname -m`): `arm64` on Apple Silicon.
    pub machine: String,
    /// Whether krbottle's own signature carries the hypervisor entitlement, or why not.
    pub entitlement: Result<(), String>,
    /// `Ok(path)` of the libkrunfw that will be used, or why none was found.
    pub libkrunfw: Result<PathBuf, String>,
    /// Whether the Docker engine (Docker Desktop) answered a ping.
    pub docker: Result<(), String>,
}

pub use crate::vm::doctor::BootVerdict;

/// The verdict from the facts: every requirement of a boot, first failure wins, each with
/// what to do next. Docker is not one: `run` boots without it.
pub fn verdict(f: &Facts) -> BootVerdict {
    let no = BootVerdict::CannotBoot;
    if f.machine != "arm64" {
        return no(format!(
            "this Mac is {} , not Apple Silicon: libkrun needs Hypervisor.framework on arm64; use an Apple Silicon Mac",
            f.machine
        ));
    }
    match &f.macos {
        Err(e) => return no(format!("cannot tell the macOS version ({e})")),
        Ok(v) => match parse_version(v) {
            Some(have) if have >= MIN_MACOS => {}
            _ => {
                return no(format!(
                    "macOS {v} is older than {}.{}; update macOS",
                    MIN_MACOS.0, MIN_MACOS.1
                ));
            }
        },
    }
    if let Err(e) = &f.entitlement {
        return no(format!("{e}; {ENTITLEMENT_HINT}"));
    }
    if let Err(e) = &f.libkrunfw {
        return no(format!("libkrunfw is missing ({e}); {LIBKRUNFW_HINT}"));
    }
    BootVerdict::CanBoot
}

/// `major.minor[.patch]` → `(major, minor)`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

/// Whether `codesign -d --entitlements - [--xml]` output grants the hypervisor entitlement: the
/// XML plist (`<key>…</key><true/>`) or the text form of macOS 12 and later
/// (`[Key] …` `[Value]` `[Bool] true`).
pub fn grants_hypervisor(codesign_output: &str) -> bool {
    let compact: String = codesign_output
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let xml = format!("<key>{HYPERVISOR_ENTITLEMENT}</key><true/>");
    let text = format!("[Key]{HYPERVISOR_ENTITLEMENT}[Value][Bool]true");
    compact.contains(&xml) || compact.contains(&text)
}

/// What `codesign`'s exit status and output say about the entitlement.
pub fn entitlement_fact(success: bool, stdout: &str, stderr: &str) -> Result<(), String> {
    if !success {
        let why = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("Executable="))
            .unwrap_or("codesign failed");
        return Err(format!("krbottle's signature cannot be read ({why})"));
    }
    if grants_hypervisor(stdout) || grants_hypervisor(stderr) {
        Ok(())
    } else {
        Err(format!(
            "krbottle's signature lacks the {HYPERVISOR_ENTITLEMENT} entitlement"
        ))
    }
}

/// Where libkrunfw is looked for, in order: `KRBOTTLE_LIBKRUNFW` when set (alone), else beside
/// the binary (`../lib/` as packaged, then its own dir), then Homebrew's prefixes.
pub fn libkrunfw_candidates(exe: Option<&Path>, explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        if let Some(prefix) = dir.parent() {
            out.push(prefix.join("lib").join(LIBKRUNFW_DYLIB));
        }
        out.push(dir.join(LIBKRUNFW_DYLIB));
    }
    out.extend(
        HOMEBREW_LIBS
            .iter()
            .map(|d| Path::new(d).join(LIBKRUNFW_DYLIB)),
    );
    out
}

/// The libkrunfw the VMM will load: the first candidate that exists, canonical (the Seatbelt
/// profile names it by its real path).
pub fn find_libkrunfw() -> Result<PathBuf, String> {
    let explicit = std::env::var_os(env_vars::KRBOTTLE_LIBKRUNFW).map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let candidates = libkrunfw_candidates(exe.as_deref(), explicit.as_deref());
    candidates
        .iter()
        .find_map(|p| p.canonicalize().ok().filter(|c| c.is_file()))
        .ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!("not found at {}", tried.join(", "))
        })
}

/// Observes everything doctor reports on macOS.
#[cfg(target_os = "macos")]
pub async fn gather() -> Facts {
    let run = |program: &str, args: &[&std::ffi::OsStr]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))
    };
    let macos = run("sw_vers", &["-productVersion".as_ref()]).and_then(|o| {
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    });
    let machine = rustix::system::uname()
        .machine()
        .to_string_lossy()
        .into_owned();
    let entitlement = match std::env::current_exe() {
        Err(e) => Err(format!("cannot find krbottle's own binary ({e})")),
        Ok(exe) => run(
            "codesign",
            &[
                "-d".as_ref(),
                "--entitlements".as_ref(),
                "-".as_ref(),
                "--xml".as_ref(),
                exe.as_os_str(),
            ],
        )
        .and_then(|o| {
            entitlement_fact(
                o.status.success(),
                &String::from_utf8_lossy(&o.stdout),
                &String::from_utf8_lossy(&o.stderr),
            )
        }),
    };
    Facts {
        macos,
        machine,
        entitlement,
        libkrunfw: find_libkrunfw(),
        docker: crate::vm::doctor::docker_fact().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable() -> Facts {
        Facts {
            macos: Ok("15.1".into()),
            machine: "arm64".into(),
            entitlement: Ok(()),
            libkrunfw: Ok("/opt/homebrew/lib/libkrunfw.5.dylib".into()),
            docker: Err("unreachable".into()),
        }
    }

    #[test]
    fn verdicts_name_the_next_step() {
        type Case = (fn(&mut Facts), Option<&'static str>);
        let table: Vec<Case> = vec![
            (|_| {}, None),
            (|f| f.macos = Ok("14.0".into()), None),
            (|f| f.machine = "x86_64".into(), Some("Apple Silicon Mac")),
            (|f| f.macos = Ok("13.6.1".into()), Some("update macOS")),
            (|f| f.macos = Ok("garbage".into()), Some("update macOS")),
            (|f| f.macos = Err("no sw_vers".into()), Some("no sw_vers")),
            (
                |f| f.entitlement = Err("lacks it".into()),
                Some("scripts/sign-macos.sh"),
            ),
            (
                |f| f.libkrunfw = Err("not found".into()),
                Some("brew install libkrunfw"),
            ),
        ];
        crate::vm::doctor::check_verdicts(capable, verdict, table);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("15.1.1\n"), Some((15, 1)));
        assert_eq!(parse_version("14"), Some((14, 0)));
        assert_eq!(parse_version("x.1"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn the_entitlement_is_read_from_codesign_output() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>com.apple.security.hypervisor</key>
	<true/>
</dict>
</plist>"#;
        let text = "Executable=/usr/local/bin/krbottle\n[Dict]\n\t[Key] com.apple.security.hypervisor\n\t[Value]\n\t\t[Bool] true\n";
        let off_xml = xml.replace("<true/>", "<false/>");
        let other = xml.replace("hypervisor", "virtualization");
        type Case<'a> = (bool, &'a str, &'a str, Result<(), &'static str>);
        let cases: Vec<Case> = vec![
            (true, xml, "Executable=/x/krbottle\n", Ok(())),
            (true, text, "", Ok(())),
            // Older codesign prints the entitlements on stderr.
            (true, "", text, Ok(())),
            (
                true,
                &off_xml,
                "",
                Err("lacks the com.apple.security.hypervisor"),
            ),
            (
                true,
                &other,
                "",
                Err("lacks the com.apple.security.hypervisor"),
            ),
            (true, "", "Executable=/x/krbottle\n", Err("lacks")),
            (
                false,
                "",
                "/x/krbottle: code object is not signed at all\n",
                Err("code object is not signed at all"),
            ),
        ];
        for (ok, out, err, want) in cases {
            match (entitlement_fact(ok, out, err), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{out:?} {err:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn libkrunfw_is_looked_for_beside_the_binary_then_in_homebrew() {
        let exe = Path::new("/opt/krbottle/bin/krbottle");
        let got = libkrunfw_candidates(Some(exe), None);
        let want: Vec<PathBuf> = [
            "/opt/krbottle/lib/libkrunfw.5.dylib",
            "/opt/krbottle/bin/libkrunfw.5.dylib",
            "/opt/homebrew/lib/libkrunfw.5.dylib",
            "/usr/local/lib/libkrunfw.5.dylib",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        let explicit = Path::new("/x/libkrunfw.5.dylib");
        assert_eq!(
            libkrunfw_candidates(Some(exe), Some(explicit)),
            [explicit.to_path_buf()]
        );
    }
}
