//! The benches' plumbing, not their timings: each prints the keys and the comparisons it
//! promises, runs every contender it says it ran, and refuses bad input. No number is judged
//! here (performance claims live in the benches' own output).

mod common;

use common::{krbottle, namespaces_unavailable, require_docker, run, should_run};
use serde_json::Value;

/// `bench gateway` with one short throughput round (the figures are checked for shape, not
/// size), then `extra`.
fn quick_gateway<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["bench", "gateway", "--rounds", "1", "--window-ms", "100"];
    args.extend_from_slice(extra);
    args
}

fn json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = krbottle();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, stdout, stderr) = run(&mut cmd);
    assert!(out.status.success(), "{args:?} failed:\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn positive(v: &Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"));
    assert!(x > 0.0, "{key} = {x} in {v}");
    x
}

#[test]
fn bad_counts_are_refused_with_the_flag_named() {
    for (args, flag) in [
        (&["bench", "run", "--runs", "0"][..], "--runs"),
        (&["bench", "gateway", "--requests", "0"][..], "--requests"),
    ] {
        let (out, _, stderr) = run(krbottle().args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// `bench run` reaches `krun_start_enter` in every run and compares with `docker run`.
#[test]
fn bench_run_reports_phases_and_the_docker_ratio() {
    if !require_docker("bench_run_reports_phases_and_the_docker_ratio")
        || !should_run(namespaces_unavailable())
    {
        return;
    }
    let r = json(&["bench", "run", "--runs", "1", "--json"], &[]);
    assert_eq!(r["image"], common::BASE_IMAGE);
    assert_eq!(r["runs"], 1);
    let names: Vec<&str> = r["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "process_start",
            "prepare",
            "namespaces",
            "config_and_relays",
            "libkrun_config"
        ]
    );
    let sum: f64 = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| positive(p, "median_ms"))
        .sum();
    let total = positive(&r, "krbottle_total_ms");
    // One run: the total is exactly the sum of its phases.
    assert!((sum - total).abs() < 1e-6, "{sum} vs {total}");
    let docker = positive(&r, "docker_run_ms");
    let ratio = positive(&r, "ratio");
    assert!((ratio - total / docker).abs() < 1e-9, "{r}");
    assert_eq!(r["target_ratio"], 0.1);
    assert_eq!(r["boot_included"], false);
    assert!(!r["vmm_outcome"].as_str().unwrap().is_empty(), "{r}");
}

fn check_latency(r: &Value, key: &str) {
    let l = &r[key];
    for k in [
        "direct_p50_ms",
        "direct_p99_ms",
        "gateway_p50_ms",
        "gateway_p99_ms",
    ] {
        positive(l, k);
    }
    let added = l["added_p50_ms"].as_f64().unwrap();
    assert!(
        (added - (l["gateway_p50_ms"].as_f64().unwrap() - l["direct_p50_ms"].as_f64().unwrap()))
            .abs()
            < 1e-9,
        "{l}"
    );
}

/// Without mitmproxy the report says why and carries no number or ratio for it.
#[test]
fn bench_gateway_without_mitmproxy_reports_only_the_direct_comparison() {
    let missing = "/nonexistent/mitmdump";
    let r = json(
        &quick_gateway(&["--requests", "16", "--json"]),
        &[("KRBOTTLE_MITMDUMP", missing)],
    );
    assert_eq!(r["requests"], 16);
    assert_eq!(r["throughput_rounds"], 1);
    assert_eq!(r["route_rounds"].as_array().map(Vec::len), Some(2), "{r}");
    check_latency(&r, "splice_new_connection");
    check_latency(&r, "splice_kept_alive");
    for key in ["route_direct", "route_gateway"] {
        positive(&r[key], "requests_per_s");
        positive(&r[key], "mb_per_s");
    }
    assert!(r["route_mitmproxy"].is_null(), "{r}");
    assert!(r["ratio_requests_per_s_vs_mitmproxy"].is_null(), "{r}");
    assert!(r["ratio_mb_per_s_vs_mitmproxy"].is_null(), "{r}");
    let why = r["mitmproxy_missing"].as_str().unwrap();
    assert!(why.contains(missing), "{why}");

    let (out, stdout, _) = run(krbottle()
        .args(quick_gateway(&["--requests", "8"]))
        .env("KRBOTTLE_MITMDUMP", missing));
    assert!(out.status.success());
    assert!(
        stdout.contains("mitmproxy: not measured") && !stdout.contains("gateway / mitmproxy"),
        "{stdout}"
    );
}

/// With mitmproxy, its route is measured (the upstream refuses a request whose client
/// credential was not replaced by the token, so a non-intercepting peer fails the bench).
#[test]
fn bench_gateway_measures_mitmproxy_doing_the_same_interception() {
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|d| d.join("mitmdump").is_file());
    if !should_run(
        (!on_path).then(|| "mitmdump is not on PATH (apt-get install mitmproxy)".to_owned()),
    ) {
        return;
    }
    let r = json(&quick_gateway(&["--requests", "16", "--json"]), &[]);
    positive(&r["route_mitmproxy"], "requests_per_s");
    positive(&r["route_mitmproxy"], "mb_per_s");
    assert_eq!(r["route_rounds"].as_array().map(Vec::len), Some(3), "{r}");
    let ratio = positive(&r, "ratio_requests_per_s_vs_mitmproxy");
    let want = r["route_gateway"]["requests_per_s"].as_f64().unwrap()
        / r["route_mitmproxy"]["requests_per_s"].as_f64().unwrap();
    assert!((ratio - want).abs() < 1e-9, "{r}");
    positive(&r, "ratio_mb_per_s_vs_mitmproxy");
    assert!(r["mitmproxy_missing"].is_null(), "{r}");
    assert!(
        r["mitmproxy_version"]
            .as_str()
            .is_some_and(|v| v.contains("itmproxy")),
        "{r}"
    );
}

/// With Docker, the bundle-ready figure and its peer are both measured; without it (skipped,
/// or failed under CI) nothing else of the report depends on it.
#[test]
fn bench_gateway_reports_bundle_ready_against_docker_run() {
    if !require_docker("bench_gateway_reports_bundle_ready_against_docker_run") {
        return;
    }
    let r = json(
        &quick_gateway(&["--requests", "8", "--json"]),
        &[("KRBOTTLE_MITMDUMP", "/nonexistent/mitmdump")],
    );
    assert!(r["bundle_ready_missing"].is_null(), "{r}");
    let b = &r["bundle_ready"];
    positive(b, "bundle_up_ms");
    positive(b, "docker_run_true_ms");
    assert_eq!(b["target_ms"], 1000.0, "{b}");
    assert!(b["runs"].as_u64().unwrap() >= 1, "{b}");
}

/// `bench prepare` on a small fixture: every contender ran from the engine to a finished tree,
/// and the ratios and krbottle's peak RSS are reported.
#[test]
fn bench_prepare_times_every_contender_end_to_end() {
    if !require_docker("bench_prepare_times_every_contender_end_to_end") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let r = json(
        &[
            "bench", "prepare", "--files", "50", "--kb", "1", "--runs", "1", "--json",
        ],
        &[("KRBOTTLE_CACHE_DIR", cache.path().to_str().unwrap())],
    );
    let names: Vec<&str> = r["timings"]
        .as_array()
        .expect("timings")
        .iter()
        .map(|t| {
            positive(t, "seconds");
            t["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names.len(), 6, "{r}");
    assert!(names.iter().any(|n| n.contains("export")), "{names:?}");
    assert!(
        names.iter().any(|n| n.contains("every entry copied")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("save")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("cp -a")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("rebuilt")), "{names:?}");
    for key in [
        "cold_vs_export",
        "cold_copy_vs_export",
        "cold_vs_save_tar",
        "cold_vs_cp",
        "rebuild_vs_cold",
        "peak_rss_mib",
        "cache_hit_micros",
    ] {
        positive(&r, key);
    }
    assert!(r["entries"].as_u64().unwrap() > 50, "{r}");
}
