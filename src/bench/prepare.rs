//! `krbottle bench prepare [IMAGE]`: image → root filesystem, end to end, against its peers.
//!
//! Every contender starts from the same thing, an image reference in the engine, and ends with a
//! finished tree on disk; the engine's time to hand out the bytes counts for everyone. Each is a
//! separate process timed by wall clock, the way a user would run it:
//! - `krbottle image prepare` into an empty cache (cold), and of a rebuilt image (the last layer
//!   changed) into the cache the cold run left (rebuild); cold again with every entry copied
//!   (`KRBOTTLE_NO_ENGINE_LINKS`), what a cache on another mount than the engine's storage pays;
//! - `docker create` + `docker export | tar -x` (the export path);
//! - `docker save | tar -x`, then GNU `tar -x` of each layer in stack order (whiteouts left as
//!   files: less work than a real unpack);
//! - `cp -a` of krbottle's result: the cost of writing the final tree once.
//!
//! Contenders alternate within each run, so page-cache and load conditions are shared, and none
//! follows a deletion (trees are removed at the end of a run, then the filesystem settles); the
//! median of `--runs` is reported. The scratch dir decides whether the cold run can link to the
//! engine's files: on the engine's mount it can (`--scratch`), elsewhere it copies. krbottle's
//! peak RSS is the largest any cold run reported.
//! Without IMAGE the bench builds its agent-shaped fixture ([`FIXTURE_DOCKERFILE`]), sized by
//! `--files` and `--kb` (building is not timed).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::median;
use crate::docker::{BuildRequest, Engine};
use crate::image::cache::{Cache, CacheKey};
use crate::image::tree::remove_tree;
use crate::image::{BASE_IMAGE, Ownership};
use crate::output::Reporter;

/// The agent-shaped fixture: many small files, a layer that changes the owner of that whole
/// tree, deletions, and a last layer a rebuild changes (build args `FILES`, `KB`, `STAMP`).
pub const FIXTURE_DOCKERFILE: &str = include_str!("agent-fixture.Dockerfile");

/// The fixture's tag; the rebuilt variant is tagged `…:rebuilt`.
pub const FIXTURE_TAG: &str = "krbottle-bench/agent-shaped:latest";
const FIXTURE_REBUILT_TAG: &str = "krbottle-bench/agent-shaped:rebuilt";

/// What to measure.
#[derive(Clone, Debug)]
pub struct PrepareBench {
    /// An image reference in the engine; `None` builds the fixture.
    pub image: Option<String>,
    /// Fixture size: files in its node_modules-like tree, and KiB per file.
    pub files: u32,
    pub kb: u32,
    /// Timed runs per contender (the median is reported).
    pub runs: usize,
    /// Where scratch trees and caches go (default: the temp dir).
    pub scratch: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Timing {
    name: &'static str,
    seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct PrepareReport {
    image: String,
    rebuilt_image: String,
    layers: usize,
    entries: u64,
    bytes: u64,
    /// Entries the cold prepare hard-linked to the engine's own files (0 when the cache and the
    /// engine's storage are on different mounts: then every entry was copied).
    engine_links: u64,
    runs: usize,
    timings: Vec<Timing>,
    /// Cold `image prepare` ÷ the export path (target ≤ 0.5).
    cold_vs_export: f64,
    /// Cold `image prepare` with every entry copied ÷ the export path.
    cold_copy_vs_export: f64,
    /// Cold `image prepare` ÷ save + GNU tar of the layers.
    cold_vs_save_tar: f64,
    /// Cold `image prepare` ÷ `cp -a` of the result (1.0 = as fast as writing the tree once).
    cold_vs_cp: f64,
    /// Rebuild ÷ cold (target ≤ 0.25).
    rebuild_vs_cold: f64,
    /// Largest peak RSS of a cold `image prepare` (target ≤ 256 MiB).
    peak_rss_mib: f64,
    cache_hit_micros: f64,
}

/// One run's times, by contender.
#[derive(Default)]
struct RunTimes {
    cold: Vec<Duration>,
    cold_copy: Vec<Duration>,
    rebuild: Vec<Duration>,
    export: Vec<Duration>,
    save_tar: Vec<Duration>,
    cp: Vec<Duration>,
}

pub async fn run(opts: &PrepareBench, reporter: &Reporter) -> anyhow::Result<PrepareReport> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let engine = Engine::connect().await?;
    let (image, rebuilt) = match &opts.image {
        Some(image) => {
            let rebuilt = format!("{FIXTURE_REBUILT_TAG}-of-{}", short_name(image));
            let dockerfile = format!("FROM {image}\nRUN echo rebuilt > /.krbottle-bench-rebuild\n");
            let rebuilt_id = build_image(&engine, &dockerfile, &[], &rebuilt, reporter).await?;
            (image.clone(), rebuilt_id)
        }
        None => {
            let size = [
                ("BASE", BASE_IMAGE.to_string()),
                ("FILES", opts.files.to_string()),
                ("KB", opts.kb.to_string()),
            ];
            let mut args: Vec<_> = size.to_vec();
            args.push(("STAMP", "1".into()));
            let first =
                build_image(&engine, FIXTURE_DOCKERFILE, &args, FIXTURE_TAG, reporter).await?;
            let mut args: Vec<_> = size.to_vec();
            args.push(("STAMP", "2".into()));
            let rebuilt = build_image(
                &engine,
                FIXTURE_DOCKERFILE,
                &args,
                FIXTURE_REBUILT_TAG,
                reporter,
            )
            .await?;
            (first, rebuilt)
        }
    };
    let info = engine.inspect(&image).await?;
    let work = tempfile::Builder::new()
        .prefix("krbottle-bench-prepare-")
        .tempdir_in(opts.scratch.as_deref().unwrap_or(&std::env::temp_dir()))
        .context("cannot create the scratch dir (pick another with --scratch)")?;
    let (work_path, runs, reporter2) = (work.path().to_path_buf(), opts.runs, reporter.clone());
    let (image2, rebuilt2) = (image.clone(), rebuilt.clone());
    let id = info.id.clone();
    let measured = tokio::task::spawn_blocking(move || {
        measure(&work_path, &image2, &rebuilt2, &id, runs, &reporter2)
    })
    .await??;
    let m = |v: &[Duration]| median(v.to_vec()).as_secs_f64();
    let t = &measured.times;
    let (cold, cold_copy, rebuild, export, save_tar, cp) = (
        m(&t.cold),
        m(&t.cold_copy),
        m(&t.rebuild),
        m(&t.export),
        m(&t.save_tar),
        m(&t.cp),
    );
    Ok(PrepareReport {
        image,
        rebuilt_image: rebuilt,
        layers: info.diff_ids.len(),
        entries: measured.entries,
        bytes: measured.bytes,
        engine_links: measured.engine_links,
        runs: opts.runs,
        timings: vec![
            Timing {
                name: "krbottle image prepare (cold)",
                seconds: cold,
            },
            Timing {
                name: "krbottle image prepare (cold, every entry copied)",
                seconds: cold_copy,
            },
            Timing {
                name: "krbottle image prepare (rebuilt, last layer changed)",
                seconds: rebuild,
            },
            Timing {
                name: "docker create + export | tar -x",
                seconds: export,
            },
            Timing {
                name: "docker save | tar -x, tar -x of each layer",
                seconds: save_tar,
            },
            Timing {
                name: "cp -a of the result",
                seconds: cp,
            },
        ],
        cold_vs_export: cold / export,
        cold_copy_vs_export: cold_copy / export,
        cold_vs_save_tar: cold / save_tar,
        cold_vs_cp: cold / cp,
        rebuild_vs_cold: rebuild / cold,
        peak_rss_mib: measured.peak_rss as f64 / (1 << 20) as f64,
        cache_hit_micros: measured.hit.as_secs_f64() * 1e6,
    })
}

struct Measured {
    times: RunTimes,
    peak_rss: u64,
    hit: Duration,
    entries: u64,
    bytes: u64,
    engine_links: u64,
}

/// The timed part, on a blocking thread: every contender once per run, in turn.
///
/// No contender is timed right after a tree was deleted: each run's trees stay until the run
/// ends, then go together, and the next run waits for the filesystem to settle ([`settle`]).
fn measure(
    work: &Path,
    image: &str,
    rebuilt: &str,
    image_id: &str,
    runs: usize,
    reporter: &Reporter,
) -> anyhow::Result<Measured> {
    let mut times = RunTimes::default();
    let mut peak_rss = 0;
    let (mut entries, mut bytes, mut engine_links) = (0, 0, 0);
    let mut hit = Duration::ZERO;
    settle(work, reporter)?;
    for run in 0..runs {
        let status = |what: &str| reporter.status(format!("run {}/{runs}: {what}", run + 1));
        let cache = work.join(format!("cache-{run}"));
        status("krbottle image prepare (cold)");
        let (took, cold) = time(|| prepare(&cache, image, false))?;
        times.cold.push(took);
        peak_rss = peak_rss.max(cold["peak_rss_bytes"].as_u64().unwrap_or(0));
        let summary = &cold["meta"]["summary"];
        entries = summary["entries"].as_u64().unwrap_or(0);
        bytes = summary["bytes"].as_u64().unwrap_or(0);
        engine_links = summary["engine_links"].as_u64().unwrap_or(0);
        let rootfs = PathBuf::from(
            cold["rootfs"]
                .as_str()
                .context("image prepare printed no rootfs")?,
        );

        status("krbottle image prepare (rebuilt)");
        let (took, _) = time(|| prepare(&cache, rebuilt, false))?;
        times.rebuild.push(took);

        if run == 0 {
            let key = CacheKey::new(image_id, Ownership::Root)
                .context("image ID is not a sha256 digest")?;
            let cache = Cache::at(&cache);
            let hits = (0..101)
                .map(|_| {
                    let t = Instant::now();
                    let found = cache.lookup(&key)?;
                    let took = t.elapsed();
                    found.context("the cold run's entry is missing")?;
                    Ok(took)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            hit = median(hits);
        }

        status("krbottle image prepare (cold, copying)");
        let copy_cache = work.join(format!("cache-copy-{run}"));
        let (took, _) = time(|| prepare(&copy_cache, image, true))?;
        times.cold_copy.push(took);

        status("cp -a of the result");
        let dest = work.join(format!("cp-{run}"));
        let (took, _) = time(|| {
            command(
                Command::new("cp").arg("-a").arg(&rootfs).arg(&dest),
                "cp -a",
            )
        })?;
        times.cp.push(took);

        status("docker create + export | tar -x");
        let (took, _) = time(|| export_and_untar(image, &work.join(format!("export-{run}"))))?;
        times.export.push(took);

        status("docker save + tar -x of the layers");
        let (save, dest) = (
            work.join(format!("save-{run}")),
            work.join(format!("save-tar-{run}")),
        );
        let (took, _) = time(|| save_and_untar(image, &save, &dest))?;
        times.save_tar.push(took);

        status("removing this run's trees (not timed)");
        for name in [&cache, &copy_cache] {
            crate::image::remove_tree_any_owner(name)?;
        }
        for name in ["cp", "export", "save", "save-tar"] {
            remove_tree(&work.join(format!("{name}-{run}")))?;
        }
        if run + 1 < runs {
            settle(work, reporter)?;
        }
    }
    Ok(Measured {
        times,
        peak_rss,
        hit,
        entries,
        bytes,
        engine_links,
    })
}

/// How long ext4 without a journal keeps a freed inode from being reused (the kernel's
/// `RECENTCY_MIN`, 60 s once its inode table block is written back), and a margin.
const EXT4_RECENTLY_DELETED: Duration = Duration::from_secs(62);

/// Lets the filesystem under `dir` forget the trees just deleted, so that no contender pays
/// for another's deletions: written back (`syncfs`), and on ext4 without a journal, where the
/// inode allocator skips every inode freed in the last minute by checking each one in turn
/// (many thousands after a tree of small files went), a wait until that window has passed.
fn settle(dir: &Path, reporter: &Reporter) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let fd = crate::image::tree::open_dir_path(dir)
            .with_context(|| format!("cannot open {}", dir.display()))?;
        rustix::fs::syncfs(&fd).context("cannot write the scratch filesystem back")?;
    }
    #[cfg(not(target_os = "linux"))]
    rustix::fs::sync();
    if ext4_without_journal(dir) {
        reporter.status(format!(
            "waiting {} s: {} is ext4 without a journal, which does not reuse inodes freed in the last minute (not timed)",
            EXT4_RECENTLY_DELETED.as_secs(),
            dir.display()
        ));
        std::thread::sleep(EXT4_RECENTLY_DELETED);
    }
    Ok(())
}

/// ext4 is Linux's.
#[cfg(not(target_os = "linux"))]
fn ext4_without_journal(_dir: &Path) -> bool {
    false
}

/// Whether `dir` is on an ext4 filesystem that has no journal (no `/proc/fs/jbd2/<dev>-*`).
#[cfg(target_os = "linux")]
fn ext4_without_journal(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let dev = meta.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
    else {
        return false;
    };
    let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else {
        return false;
    };
    if !Path::new("/proc/fs/ext4").join(name).exists() {
        return false;
    }
    let journal = format!("{name}-");
    !std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&journal))
    })
}

fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed(), out))
}

/// `krbottle image prepare IMAGE --json` with its own cache dir; its JSON. `copying`: with
/// `KRBOTTLE_NO_ENGINE_LINKS`, every entry taken from the engine's storage is copied.
fn prepare(cache: &Path, image: &str, copying: bool) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("cannot find krbottle's own binary")?;
    let mut cmd = Command::new(exe);
    if copying {
        cmd.env(crate::env_vars::KRBOTTLE_NO_ENGINE_LINKS, "1");
    }
    cmd.args([
        "-q",
        "image",
        "prepare",
        image,
        "--ownership",
        "root",
        "--json",
    ])
    .env(crate::env_vars::KRBOTTLE_CACHE_DIR, cache);
    let out = super::output(&mut cmd, &format!("krbottle image prepare {image}"))?;
    Ok(serde_json::from_slice(&out)?)
}

/// Runs a peer's step, its output discarded.
fn command(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    super::output(cmd.stdout(Stdio::null()), what).map(drop)
}

/// GNU tar reading `stdin` into `dest` (created), as root keeps ids and modes.
fn untar(dest: &Path, stdin: Stdio) -> anyhow::Result<std::process::Child> {
    std::fs::create_dir_all(dest)?;
    Command::new("tar")
        .args(["-x", "--numeric-owner", "-p", "-C"])
        .arg(dest)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run GNU tar")
}

/// `docker create` + `docker export | tar -x` + `docker rm`, with the docker CLI.
fn export_and_untar(image: &str, dest: &Path) -> anyhow::Result<()> {
    let out = super::output(
        Command::new("docker").args(["create", image, "true"]),
        "docker create",
    )?;
    let id = String::from_utf8_lossy(&out).trim().to_string();
    let result = (|| {
        let mut export = Command::new("docker")
            .args(["export", &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut tar = untar(dest, Stdio::from(export.stdout.take().context("stdout")?))?;
        let (e, t) = (export.wait()?, tar.wait()?);
        if !e.success() || !t.success() {
            bail!("docker export | tar -x failed ({e}, {t})");
        }
        Ok(())
    })();
    command(Command::new("docker").args(["rm", "-f", &id]), "docker rm")?;
    result
}

/// `docker save | tar -x` into `save`, then GNU `tar -x` of each layer in `manifest.json`'s
/// order into `dest`.
fn save_and_untar(image: &str, save: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut docker = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run the docker CLI; install it")?;
    let mut tar = untar(save, Stdio::from(docker.stdout.take().context("stdout")?))?;
    let (d, t) = (docker.wait()?, tar.wait()?);
    if !d.success() || !t.success() {
        bail!("docker save | tar -x failed ({d}, {t})");
    }
    let mut text = String::new();
    std::fs::File::open(save.join("manifest.json"))
        .context("the saved image has no manifest.json")?
        .read_to_string(&mut text)?;
    let manifest: serde_json::Value = serde_json::from_str(&text)?;
    let layers = manifest[0]["Layers"]
        .as_array()
        .context("manifest.json has no Layers")?;
    std::fs::create_dir_all(dest)?;
    for layer in layers {
        let layer = layer.as_str().context("a layer name")?;
        command(
            Command::new("tar")
                .args(["-x", "--numeric-owner", "-p", "-f"])
                .arg(save.join(layer))
                .arg("-C")
                .arg(dest),
            "tar -x of a layer",
        )?;
    }
    Ok(())
}

/// Builds `dockerfile` (alone in its context) as `tag`, not timed.
async fn build_image(
    engine: &Engine,
    dockerfile: &str,
    args: &[(&str, String)],
    tag: &str,
    reporter: &Reporter,
) -> anyhow::Result<String> {
    let mut context = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    context.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    let request = BuildRequest {
        what: format!("the bench image {tag}"),
        context_tar: context.into_inner()?,
        tag: tag.to_string(),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Default::default()
    };
    let spinner = reporter.spinner(&format!("building {tag} (not timed)"));
    let built = engine
        .build(request, |line| {
            spinner.set_message(line.trim().chars().take(70).collect::<String>())
        })
        .await;
    spinner.finish_and_clear();
    // The ID the build made, not the tag: a tag can be moved by anyone sharing the engine.
    Ok(built?)
}

/// An image reference as a tag suffix.
fn short_name(image: &str) -> String {
    image
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

impl crate::bench::Report for PrepareReport {
    fn print(&self) {
        println!(
            "bench prepare {} ({} layers, {} entries, {:.1} MB; median of {} runs, each from the engine to a finished tree)",
            self.image,
            self.layers,
            self.entries,
            self.bytes as f64 / 1e6,
            self.runs
        );
        for t in &self.timings {
            println!("  {:<54} {:>8.3} s", t.name, t.seconds);
        }
        let linked = match self.engine_links {
            0 => "none: the cache is not on the engine's mount".to_string(),
            n => format!("{n}"),
        };
        println!("  entries linked to the engine's files: {linked}");
        println!(
            "  cold vs export + tar -x:        {:.2}x (target <= 0.5)",
            self.cold_vs_export
        );
        println!(
            "  cold, copying, vs export:       {:.2}x",
            self.cold_copy_vs_export
        );
        println!(
            "  cold vs save + tar -x layers:   {:.2}x",
            self.cold_vs_save_tar
        );
        println!("  cold vs cp -a of the result:    {:.2}x", self.cold_vs_cp);
        println!(
            "  rebuild vs cold:                {:.2}x (target <= 0.25)",
            self.rebuild_vs_cold
        );
        println!(
            "  peak RSS of image prepare:      {:.0} MiB (target <= 256)",
            self.peak_rss_mib
        );
        println!(
            "  cache hit:                      {:.0} µs",
            self.cache_hit_micros
        );
    }
}
