//! `krbottle doctor`: can this machine boot a guest, and if not, why (Linux: KVM, libkrunfw,
//! user namespaces, Docker; macOS: the Mac, the hypervisor entitlement, libkrunfw, Docker
//! Desktop).

use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::exit;
use crate::vm::doctor::BootVerdict;

#[derive(Serialize)]
struct Report<F> {
    facts: F,
    boot: BootVerdict,
}

/// One fact, as a line: `ok` with what was seen, or `FAIL` with why.
fn line(name: &str, r: Result<String, String>) {
    match r {
        Ok(v) => println!("ok    {name}: {v}"),
        Err(e) => println!("FAIL  {name}: {e}"),
    }
}

fn finish(boot: &BootVerdict) -> u8 {
    match boot {
        BootVerdict::CanBoot => {
            println!("verdict: can boot");
            exit::OK
        }
        BootVerdict::CannotBoot(why) => {
            println!("verdict: cannot boot: {why}");
            exit::FAILURE
        }
    }
}

fn code(boot: &BootVerdict) -> u8 {
    match boot {
        BootVerdict::CanBoot => exit::OK,
        BootVerdict::CannotBoot(_) => exit::FAILURE,
    }
}

#[cfg(target_os = "linux")]
use crate::vm::doctor;
#[cfg(target_os = "macos")]
use crate::vm::doctor_macos as doctor;

pub async fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let facts = doctor::gather().await;
    let boot = doctor::verdict(&facts);
    if args.json {
        let code = code(&boot);
        crate::output::print_json(&Report { facts, boot })?;
        return Ok(code);
    }
    print_facts(&facts);
    Ok(finish(&boot))
}

#[cfg(target_os = "linux")]
fn print_facts(facts: &doctor::Facts) {
    line(
        "/dev/kvm",
        facts.kvm.clone().map(|v| format!("KVM API version {v}")),
    );
    println!(
        "      kvm modules: {}",
        if facts.kvm_modules.is_empty() {
            "none".to_owned()
        } else {
            facts.kvm_modules.join(", ")
        }
    );
    line(
        "libkrunfw",
        facts
            .libkrunfw
            .clone()
            .map(|v| format!("version {v} from {}", facts.libkrunfw_source)),
    );
    line(
        "user namespaces",
        facts
            .user_namespaces
            .clone()
            .map(|()| "available".to_owned()),
    );
    line("id mapping", facts.id_mapping.clone());
    line(
        "docker",
        facts.docker.clone().map(|()| "reachable".to_owned()),
    );
}

#[cfg(target_os = "macos")]
fn print_facts(facts: &doctor::Facts) {
    line("macOS", facts.macos.clone());
    line(
        "Apple Silicon",
        if facts.machine == "arm64" {
            Ok(facts.machine.clone())
        } else {
            Err(format!("{} (needs arm64)", facts.machine))
        },
    );
    line(
        "hypervisor entitlement",
        facts
            .entitlement
            .clone()
            .map(|()| format!("{} in krbottle's signature", doctor::HYPERVISOR_ENTITLEMENT))
            .map_err(|e| format!("{e}; {}", doctor::ENTITLEMENT_HINT)),
    );
    line(
        "libkrunfw",
        facts
            .libkrunfw
            .clone()
            .map(|p| p.display().to_string())
            .map_err(|e| format!("{e}; {}", doctor::LIBKRUNFW_HINT)),
    );
    line(
        "docker",
        facts
            .docker
            .clone()
            .map(|()| "reachable".to_owned())
            .map_err(|e| format!("{e}; start Docker Desktop (`start` needs it for the bundle)")),
    );
}
