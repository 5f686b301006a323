//! Can this machine boot a krbottle guest? Observable facts, and a verdict that is a pure
//! function of them (so it is testable on any machine).
//!
//! The hypervisor question is answered from what can be seen without booting: whether
//! `/dev/kvm` opens, its API version, and which KVM vendor module backs it. `kvm_pvm` (a
//! paravirtual nested KVM) opens fine but cannot boot libkrunfw's stock kernel, so it is
//! detected by name and reported plainly.
//!
//! The observations are Linux's; the verdict type and the Docker check are shared with macOS's
//! doctor (`vm::doctor_macos`).

#[cfg(target_os = "linux")]
use std::path::{Path, PathBuf};

use serde::Serialize;

#[cfg(target_os = "linux")]
use crate::env_vars;
#[cfg(target_os = "linux")]
use crate::vm::krun::{LIBKRUNFW_SONAME, Libkrunfw};

/// The KVM API version every usable kernel reports.
const KVM_API_VERSION: i32 = 12;
/// KVM vendor modules that run libkrunfw's kernel.
const CAPABLE_KVM_MODULES: [&str; 2] = ["kvm_intel", "kvm_amd"];
/// The paravirtual KVM module that cannot.
const PVM_MODULE: &str = "kvm_pvm";

/// What doctor observed.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    /// `Ok(api version)` or why `/dev/kvm` could not be opened/queried.
    pub kvm: Result<i32, String>,
    /// Loaded KVM vendor modules among kvm_intel, kvm_amd, kvm_pvm.
    pub kvm_modules: Vec<String>,
    /// `Ok(version)` of the libkrunfw that will be used, or why it could not be loaded.
    pub libkrunfw: Result<u32, String>,
    /// Where it was looked for.
    pub libkrunfw_source: String,
    /// Whether new user namespaces can be created (from /proc/sys).
    pub user_namespaces: Result<(), String>,
    /// The id mapping the VMM will use, e.g. `identity (root)` or the subordinate ranges.
    pub id_mapping: Result<String, String>,
    /// Whether the Docker engine answered a ping.
    pub docker: Result<(), String>,
}

/// Whether a guest can boot here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum BootVerdict {
    CanBoot,
    CannotBoot(String),
}

/// A verdict case: how a capable machine's facts change, and the words the refusal contains
/// (`None`: it still boots).
#[cfg(test)]
pub(crate) type VerdictCase<F> = (fn(&mut F), Option<&'static str>);

/// Checks a table of verdicts: each case changes a capable machine's facts (`capable`), and the
/// verdict is then a boot (`None`) or a refusal whose reason contains the given words.
#[cfg(test)]
pub(crate) fn check_verdicts<F: std::fmt::Debug>(
    capable: fn() -> F,
    verdict: fn(&F) -> BootVerdict,
    table: Vec<VerdictCase<F>>,
) {
    for (mutate, want) in table {
        let mut f = capable();
        mutate(&mut f);
        match (verdict(&f), want) {
            (BootVerdict::CanBoot, None) => {}
            (BootVerdict::CannotBoot(r), Some(w)) => assert!(r.contains(w), "{r}"),
            (v, w) => panic!("{f:?}: got {v:?}, want {w:?}"),
        }
    }
}

/// The verdict from the facts: every requirement of a boot, first failure wins.
pub fn verdict(f: &Facts) -> BootVerdict {
    let no = |s: String| BootVerdict::CannotBoot(s);
    if let v @ BootVerdict::CannotBoot(_) = hypervisor_verdict(&f.kvm, &f.kvm_modules) {
        return v;
    }
    if let Err(e) = &f.libkrunfw {
        return no(format!("libkrunfw is missing ({e}); {}", LIBKRUNFW_HINT));
    }
    if let Err(e) = &f.user_namespaces {
        return no(e.clone());
    }
    if let Err(e) = &f.id_mapping {
        return no(e.clone());
    }
    BootVerdict::CanBoot
}

/// Whether the hypervisor (`/dev/kvm` and the module behind it) can boot libkrunfw's kernel.
pub fn hypervisor_verdict(kvm: &Result<i32, String>, modules: &[String]) -> BootVerdict {
    let no = |s: String| BootVerdict::CannotBoot(s);
    match kvm {
        Err(e) => {
            return no(format!(
                "cannot use /dev/kvm ({e}); enable KVM, or add yourself to the `kvm` group and log in again"
            ));
        }
        Ok(v) if *v != KVM_API_VERSION => {
            return no(format!(
                "/dev/kvm reports KVM API version {v}, expected {KVM_API_VERSION}"
            ));
        }
        Ok(_) => {}
    }
    let capable = modules
        .iter()
        .any(|m| CAPABLE_KVM_MODULES.contains(&m.as_str()));
    if !capable && modules.iter().any(|m| m == PVM_MODULE) {
        return no("/dev/kvm is kvm_pvm (paravirtual nested KVM), which cannot boot the libkrunfw kernel; use a host with kvm_intel or kvm_amd".to_owned());
    }
    if !capable {
        return no(
            "no kvm_intel or kvm_amd module is loaded; load the one for your CPU".to_owned(),
        );
    }
    BootVerdict::CanBoot
}

/// How to get libkrunfw.
pub const LIBKRUNFW_HINT: &str = "install libkrunfw 5 (package `libkrunfw5`, or `scripts/install-libkrunfw.sh`) or point KRBOTTLE_LIBKRUNFW at libkrunfw.so.5";

/// Observes the KVM facts.
#[cfg(target_os = "linux")]
pub fn kvm_facts() -> (Result<i32, String>, Vec<String>) {
    let kvm = crate::sys::kvm::api_version(Path::new(crate::sys::kvm::DEV_KVM))
        .map_err(|e| e.to_string());
    let modules = CAPABLE_KVM_MODULES
        .iter()
        .chain([&PVM_MODULE])
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .map(|m| (*m).to_owned())
        .collect();
    (kvm, modules)
}

/// The explicit libkrunfw path from the environment, if any.
#[cfg(target_os = "linux")]
pub fn libkrunfw_override() -> Option<PathBuf> {
    std::env::var_os(env_vars::KRBOTTLE_LIBKRUNFW).map(PathBuf::from)
}

/// Loads libkrunfw the way the VMM child will and reports its version.
#[cfg(target_os = "linux")]
pub fn libkrunfw_fact() -> (Result<u32, String>, String) {
    let path = libkrunfw_override();
    let source = match &path {
        Some(p) => format!("{} ({})", p.display(), env_vars::KRBOTTLE_LIBKRUNFW),
        None => format!("{LIBKRUNFW_SONAME} (beside the binary, then the system library path)"),
    };
    let fact = Libkrunfw::load(path.as_deref())
        .and_then(|l| l.version())
        .map_err(|e| e.to_string());
    (fact, source)
}

#[cfg(target_os = "linux")]
fn user_namespaces_fact() -> Result<(), String> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err("user namespaces are disabled (user.max_user_namespaces = 0); set it above 0 with sysctl".to_owned());
    }
    let root = rustix::process::getuid().is_root();
    if !root && read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Err("unprivileged user namespaces are disabled; run `sysctl kernel.unprivileged_userns_clone=1`".to_owned());
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn id_mapping_fact() -> Result<String, String> {
    let m = crate::sys::userns::IdMapping::for_current_user().map_err(|e| e.to_string())?;
    if !m.via_helpers {
        return Ok("identity (root)".to_owned());
    }
    let r = |v: &[crate::sys::userns::IdRange]| {
        v.iter()
            .map(|r| format!("{}→{}+{}", r.inside, r.outside, r.count))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "uids {}; gids {} (newuidmap/newgidmap)",
        r(&m.uids),
        r(&m.gids)
    ))
}

/// Whether the Docker engine answers (Docker Desktop on macOS).
pub async fn docker_fact() -> Result<(), String> {
    let connect = crate::docker::Engine::connect();
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::output::error_chain(&e)),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

/// Observes everything doctor reports.
#[cfg(target_os = "linux")]
pub async fn gather() -> Facts {
    let (kvm, kvm_modules) = kvm_facts();
    let (libkrunfw, libkrunfw_source) = libkrunfw_fact();
    Facts {
        kvm,
        kvm_modules,
        libkrunfw,
        libkrunfw_source,
        user_namespaces: user_namespaces_fact(),
        id_mapping: id_mapping_fact(),
        docker: docker_fact().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable() -> Facts {
        Facts {
            kvm: Ok(12),
            kvm_modules: vec!["kvm_amd".into()],
            libkrunfw: Ok(5),
            libkrunfw_source: String::new(),
            user_namespaces: Ok(()),
            id_mapping: Ok("identity (root)".into()),
            docker: Err("unreachable".into()),
        }
    }

    #[test]
    fn verdicts() {
        type Case = (fn(&mut Facts), Option<&'static str>);
        let table: Vec<Case> = vec![
            (|_| {}, None),
            (|f| f.kvm_modules = vec!["kvm_intel".into()], None),
            (|f| f.kvm_modules = vec!["kvm_pvm".into()], Some("kvm_pvm")),
            (
                |f| f.kvm_modules = vec!["kvm_pvm".into(), "kvm_amd".into()],
                None,
            ),
            (|f| f.kvm_modules = vec![], Some("no kvm_intel or kvm_amd")),
            (
                |f| f.kvm = Err("Permission denied".into()),
                Some("`kvm` group"),
            ),
            (|f| f.kvm = Ok(11), Some("API version 11")),
            (
                |f| f.libkrunfw = Err("not found".into()),
                Some("install libkrunfw"),
            ),
            (
                |f| f.user_namespaces = Err("disabled".into()),
                Some("disabled"),
            ),
            (
                |f| f.id_mapping = Err("no subuid".into()),
                Some("no subuid"),
            ),
        ];
        check_verdicts(capable, verdict, table);
    }
}
