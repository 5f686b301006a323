//! `krbottle bench gateway`: the gateway's cost, against a direct connection and against
//! mitmproxy doing the same interception, in one run, on 127.0.0.1 only.
//!
//! The client and an HTTPS upstream (rustls + hyper, HTTP/1.1, its own CA minted with rcgen,
//! serving a small and a 1 MiB response) run in this process. The gateway runs as the bundle
//! runs it, `krbottle bundle gateway` in its own process, with one allowed host and one route,
//! both names pinned to 127.0.0.1 (no DNS). mitmproxy (`mitmdump`) is likewise a child process,
//! with an addon doing what a route does: drop the client's credentials, inject the token,
//! scrub the token's forms from responses; it verifies the upstream against the same test CA.
//!
//! - Splice latency: sequential GETs of the small response through a spliced CONNECT and
//!   directly, interleaved, (a) one new connection per request (TCP, CONNECT, TLS handshake,
//!   request: per-connection setup), (b) one kept-alive tunnel (the relay's per-request cost).
//!   Added latency is the gateway's percentile minus the direct one.
//! - Route throughput: [`CONCURRENCY`] warm kept-alive connections (opened, and one request
//!   made on each, before timing) request in a loop for `--window-ms`; requests/s from the
//!   small response, MB/s from the large one. The contenders alternate within each of
//!   `--rounds` rounds and the median is reported, so a burst of noise on the shared cores
//!   hits one round, not one contender. The upstream checks every routed request carries the
//!   injected token, so a contender that does not intercept cannot post a number.
//!
//! - Bundle ready (`ready`): `bundle up` of a cached bundle image until the gateway answers
//!   `/healthz`, against `docker run --rm --entrypoint true` of the same image. Left out, with
//!   the reason, without a Docker engine or the base image.
//!
//! Both proxies compete for the same cores with the client and the upstream; on a small
//! machine the direct row is the ceiling of what this client can measure. Nothing is invented
//! when mitmdump is missing: the report says so and leaves its numbers out.

mod client;
mod proxies;
mod ready;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use self::client::{
    Dial, client_tls, direct_ip, host_port, latency_kept_alive, latency_new_connections, throughput,
};
use self::proxies::{Mitmdump, find_mitmdump, mitmdump_version, start_gateway};
use self::ready::BundleReady;
use self::upstream::{UpstreamPki, spawn_upstream};
use crate::ca::BottleCa;
use crate::output::Reporter;

/// The allowed (spliced) host and the route (intercepted) host, both pinned to 127.0.0.1.
const SPLICE_HOST: &str = "upstream.bench.test";
const ROUTE_HOST: &str = "route.bench.test";
/// The environment variable the route's token is read from, by the gateway and by mitmdump's
/// addon alike (a token never goes on a command line).
const TOKEN_ENV: &str = crate::env_vars::KRBOTTLE_BENCH_ROUTE_TOKEN;
/// A made-up token: the bench talks to nothing real.
const TOKEN: &str = "bench-route-token-0123456789abcdef";
/// What the client sends as its own credential on a route; the proxy must drop it.
const CLIENT_CREDENTIAL: &str = "Bearer client-placeholder-credential";
/// Response header the upstream sets when the request carried the injected token.
const INJECTED_HEADER: &str = "x-bench-token";
const SMALL_PATH: &str = "/small";
const SMALL_BYTES: usize = 1024;
const LARGE_PATH: &str = "/large";
const LARGE_BYTES: usize = 1 << 20;
/// Kept-alive connections sharing the throughput requests.
const CONCURRENCY: u32 = 8;

/// Longest any connection setup or request may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest mitmdump may take to start listening.
const MITMDUMP_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Targets the numbers are judged against.
const TARGET_ADDED_P50_MS: f64 = 0.5;
const TARGET_RATIO_VS_MITMPROXY: f64 = 5.0;

#[derive(Debug, Serialize)]
struct Latency {
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    gateway_p50_ms: f64,
    gateway_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Throughput {
    requests_per_s: f64,
    mb_per_s: f64,
}

impl Throughput {
    /// The median of each figure over `rounds` (not empty), separately.
    fn median(rounds: &[Throughput]) -> Throughput {
        let mid = |f: fn(&Throughput) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[(v.len() - 1) / 2]
        };
        Throughput {
            requests_per_s: mid(|t| t.requests_per_s),
            mb_per_s: mid(|t| t.mb_per_s),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GatewayReport {
    requests: u32,
    /// Throughput rounds; each throughput figure is the median over them.
    throughput_rounds: u32,
    /// Seconds each contender requests in a loop, per round and response size.
    throughput_window_s: f64,
    large_bytes: usize,
    small_bytes: usize,
    concurrency: u32,
    /// One new TCP connection, CONNECT and TLS handshake per request.
    splice_new_connection: Latency,
    /// One kept-alive tunnel for all requests.
    splice_kept_alive: Latency,
    target_added_p50_ms: f64,
    route_direct: Throughput,
    route_gateway: Throughput,
    /// Every round's figures: `[direct, gateway, mitmproxy if measured][round]`.
    route_rounds: Vec<Vec<Throughput>>,
    /// Absent when mitmdump could not be found (see `mitmproxy_missing`).
    route_mitmproxy: Option<Throughput>,
    mitmproxy_version: Option<String>,
    mitmproxy_missing: Option<String>,
    /// gateway ÷ mitmproxy (target ≥ 5); absent without mitmproxy.
    ratio_requests_per_s_vs_mitmproxy: Option<f64>,
    ratio_mb_per_s_vs_mitmproxy: Option<f64>,
    target_ratio_vs_mitmproxy: f64,
    /// Absent without Docker or the base image (see `bundle_ready_missing`).
    bundle_ready: Option<BundleReady>,
    bundle_ready_missing: Option<String>,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct GatewayBench {
    /// Requests per contender for the latency rows.
    pub requests: u32,
    /// Throughput rounds (contenders alternate in each; the median is reported).
    pub rounds: u32,
    /// How long each contender requests in a loop, per round and response size.
    pub window: Duration,
}

/// Runs the bench.
pub async fn run(args: &GatewayBench, reporter: &Reporter) -> anyhow::Result<GatewayReport> {
    let dir = tempfile::Builder::new()
        .prefix("krbottle-bench-gateway-")
        .tempdir()
        .context("Could not create a scratch dir in the temp dir")?;
    reporter.status("starting the upstream and the gateway");
    let pki = UpstreamPki::mint()?;
    let upstream_ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca_file, &pki.ca_pem)?;
    let upstream = spawn_upstream(pki.server_config()?).await?;
    let bottle_ca = BottleCa::generate("bench")?;
    let gateway_process =
        start_gateway(dir.path(), &bottle_ca, &upstream_ca_file, upstream.port())?;
    let gateway = gateway_process.addr;

    let direct_tls = client_tls(&[&pki.ca_pem])?;
    let bottle_tls = client_tls(&[&pki.ca_pem, bottle_ca.cert_pem()])?;
    let port = upstream.port();
    let via_gateway = |host: &str, tls: &Arc<rustls::ClientConfig>, route: bool| Dial {
        proxy: Some(gateway),
        connect_to: host_port(host, port),
        sni: host.to_owned(),
        tls: tls.clone(),
        route,
    };
    let n = args.requests;
    let window = args.window;

    // The splice: the same TLS server straight and through the gateway's CONNECT tunnel.
    let splice = [
        direct_ip(port, SPLICE_HOST, &direct_tls),
        via_gateway(SPLICE_HOST, &bottle_tls, false),
    ];
    reporter.status(format!(
        "splice latency, new connections ({n} requests each)"
    ));
    let splice_new_connection = latency_new_connections(&splice, n).await?;
    reporter.status(format!(
        "splice latency, kept-alive tunnel ({n} requests each)"
    ));
    let splice_kept_alive = latency_kept_alive(&splice, n).await?;

    // mitmdump starts once (it takes seconds); the contenders then alternate within each round.
    let mitm = match find_mitmdump() {
        Err(why) => {
            reporter.status(format!("mitmproxy left out: {why}"));
            Err(why)
        }
        Ok(mitmdump) => {
            reporter.status(format!("starting {}", mitmdump.display()));
            let version = mitmdump_version(&mitmdump);
            let mitm = Mitmdump::start(&mitmdump, dir.path(), &upstream_ca_file).await?;
            // mitmproxy resolves CONNECT names itself, so it is sent the address; the client's
            // SNI and Host still name the route host, which mitmproxy passes upstream.
            let dial = Dial {
                proxy: Some(mitm.proxy.addr),
                connect_to: upstream.to_string(),
                sni: ROUTE_HOST.to_owned(),
                tls: client_tls(&[&pki.ca_pem, &mitm.ca_pem])?,
                route: true,
            };
            Ok((mitm, dial, version))
        }
    };
    let direct = direct_ip(port, ROUTE_HOST, &direct_tls);
    let via = via_gateway(ROUTE_HOST, &bottle_tls, true);
    let mut contenders: Vec<&Dial> = vec![&direct, &via];
    if let Ok((_, dial, _)) = &mitm {
        contenders.push(dial);
    }
    let mut samples: Vec<Vec<Throughput>> = vec![Vec::new(); contenders.len()];
    for round in 1..=args.rounds {
        reporter.status(format!(
            "route throughput, round {round}/{}: {} contenders, {:.1} s of requests each per size",
            args.rounds,
            contenders.len(),
            window.as_secs_f64()
        ));
        for (dial, samples) in contenders.iter().zip(&mut samples) {
            samples.push(throughput(dial, window).await?);
        }
    }
    let mut medians = samples.iter().map(|s| Throughput::median(s));
    let route_direct = medians.next().expect("direct was measured");
    let route_gateway = medians.next().expect("the gateway was measured");
    let route_mitmproxy = medians.next();
    let (mitmproxy_version, mitmproxy_missing) = match mitm {
        Ok((mitm, _, version)) => {
            drop(mitm);
            (version, None)
        }
        Err(why) => (None, Some(why)),
    };
    let rounds = samples;
    let (bundle_ready, bundle_ready_missing) = match ready::measure(dir.path(), reporter).await {
        Ok(r) => (Some(r), None),
        Err(e) => {
            let why = format!("{e:#}");
            reporter.status(format!("bundle ready left out: {why}"));
            (None, Some(why))
        }
    };
    let ratio =
        |f: fn(&Throughput) -> f64| route_mitmproxy.as_ref().map(|m| f(&route_gateway) / f(m));
    Ok(GatewayReport {
        requests: n,
        throughput_rounds: args.rounds,
        throughput_window_s: window.as_secs_f64(),
        large_bytes: LARGE_BYTES,
        small_bytes: SMALL_BYTES,
        concurrency: CONCURRENCY,
        splice_new_connection,
        splice_kept_alive,
        target_added_p50_ms: TARGET_ADDED_P50_MS,
        ratio_requests_per_s_vs_mitmproxy: ratio(|t| t.requests_per_s),
        ratio_mb_per_s_vs_mitmproxy: ratio(|t| t.mb_per_s),
        route_direct,
        route_gateway,
        route_rounds: rounds,
        route_mitmproxy,
        mitmproxy_version,
        mitmproxy_missing,
        target_ratio_vs_mitmproxy: TARGET_RATIO_VS_MITMPROXY,
        bundle_ready,
        bundle_ready_missing,
    })
}

impl crate::bench::Report for GatewayReport {
    fn print(&self) {
        let r = self;
        println!(
            "bench gateway (127.0.0.1 only; HTTP/1.1 over TLS; {} requests per contender for latency)",
            r.requests
        );
        println!(
            "  spliced CONNECT, GET of {} bytes, added = gateway percentile - direct percentile:",
            r.small_bytes
        );
        for (name, l) in [
            ("new connection per request", &r.splice_new_connection),
            ("one kept-alive tunnel", &r.splice_kept_alive),
        ] {
            println!(
                "    {name:<27} direct p50 {:>7.3} ms p99 {:>7.3} ms | gateway p50 {:>7.3} ms p99 {:>7.3} ms | added p50 {:>+7.3} ms p99 {:>+7.3} ms",
                l.direct_p50_ms,
                l.direct_p99_ms,
                l.gateway_p50_ms,
                l.gateway_p99_ms,
                l.added_p50_ms,
                l.added_p99_ms
            );
        }
        println!(
            "    target: added p50 <= {} ms for a new connection",
            r.target_added_p50_ms
        );
        println!(
            "  intercepted route (client credential dropped, token injected, responses scrubbed), {} warm kept-alive connections, median of {} rounds of {:.1} s per size:",
            r.concurrency, r.throughput_rounds, r.throughput_window_s
        );
        let row = |name: &str, t: &Throughput| {
            println!(
                "    {name:<38} {:>9.0} requests/s {:>9.1} MB/s",
                t.requests_per_s, t.mb_per_s
            );
        };
        row("direct (no proxy, no interception)", &r.route_direct);
        row("krbottle gateway route", &r.route_gateway);
        match (&r.route_mitmproxy, &r.mitmproxy_missing) {
            (Some(m), _) => {
                let name = format!(
                    "mitmproxy ({})",
                    r.mitmproxy_version.as_deref().unwrap_or("mitmdump")
                );
                row(&name, m);
                println!(
                    "    gateway / mitmproxy: {:.1}x requests/s, {:.1}x MB/s (target >= {})",
                    r.ratio_requests_per_s_vs_mitmproxy.unwrap_or_default(),
                    r.ratio_mb_per_s_vs_mitmproxy.unwrap_or_default(),
                    r.target_ratio_vs_mitmproxy
                );
            }
            (None, why) => println!(
                "    mitmproxy: not measured ({}); no ratio against it",
                why.as_deref().unwrap_or("unknown")
            ),
        }
        match (&r.bundle_ready, &r.bundle_ready_missing) {
            (Some(b), _) => {
                println!("  bundle ready, cached image (median of {} runs):", b.runs);
                println!(
                    "    bundle up until /healthz answers        {:>9.1} ms   (network, container create and start, probe)",
                    b.bundle_up_ms
                );
                println!(
                    "    docker run --rm --entrypoint true IMAGE {:>9.1} ms",
                    b.docker_run_true_ms
                );
                println!("    target: bundle up <= {} ms", b.target_ms);
            }
            (None, why) => println!(
                "  bundle ready: not measured ({})",
                why.as_deref().unwrap_or("unknown")
            ),
        }
    }
}
