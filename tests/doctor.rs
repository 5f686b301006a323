//! `krbottle doctor` on this machine: its JSON report and its verdict agree with what the
//! machine shows (the decision itself is unit-tested in `vm::doctor`).

mod common;

use std::path::Path;

use common::{krbottle, run};

#[test]
fn json_report_matches_the_machine() {
    let (out, stdout, stderr) = run(krbottle().args(["doctor", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let verdict = v["boot"]["verdict"].as_str().unwrap();
    assert_eq!(
        out.status.success(),
        verdict == "can_boot",
        "{stdout}{stderr}"
    );

    let modules: Vec<&str> = v["facts"]["kvm_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        assert_eq!(
            modules.contains(&m),
            Path::new("/sys/module").join(m).exists(),
            "{m}"
        );
    }
    let pvm_only = modules == ["kvm_pvm"];
    if pvm_only && v["facts"]["kvm"]["Ok"].is_number() {
        assert_eq!(verdict, "cannot_boot");
        assert!(
            v["boot"]["reason"].as_str().unwrap().contains("kvm_pvm"),
            "{stdout}"
        );
    }
    assert!(v["facts"]["libkrunfw"].is_object());
}

#[test]
fn human_report_ends_with_the_verdict() {
    let (_, stdout, _) = run(krbottle().arg("doctor"));
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("verdict: can boot") || last.starts_with("verdict: cannot boot: "),
        "{stdout}"
    );
}

#[test]
fn a_missing_libkrunfw_is_reported_with_how_to_install_it() {
    let (out, stdout, _) = run(krbottle()
        .args(["doctor", "--json"])
        .env("KRBOTTLE_LIBKRUNFW", "/nonexistent/libkrunfw.so.5"));
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["facts"]["libkrunfw"]["Err"].is_string(), "{stdout}");
}
