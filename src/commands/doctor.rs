//! `krbottle doctor`: can this machine boot a guest, and if not, why.

use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::exit;
use crate::vm::doctor::{self, BootVerdict, Facts};

#[derive(Serialize)]
struct Report {
    facts: Facts,
    boot: BootVerdict,
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let facts = doctor::gather().await;
    let boot = doctor::verdict(&facts);
    let code = match boot {
        BootVerdict::CanBoot => exit::OK,
        BootVerdict::CannotBoot(_) => exit::FAILURE,
    };
    if args.json {
        crate::output::print_json(&Report { facts, boot })?;
        return Ok(code);
    }
    let line = |name: &str, r: Result<String, String>| match r {
        Ok(v) => println!("ok    {name}: {v}"),
        Err(e) => println!("FAIL  {name}: {e}"),
    };
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
    match boot {
        BootVerdict::CanBoot => println!("verdict: can boot"),
        BootVerdict::CannotBoot(why) => println!("verdict: cannot boot: {why}"),
    }
    Ok(code)
}
