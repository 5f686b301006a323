//! `krbottle bench unpack IMAGE` saves the image once (not timed), then times, for the same layers:
//! - krbottle's unpacker reading the saved stream (digests verified, whiteouts applied, merged);
//! - GNU `tar -x` of each layer file in order (no verification, whiteouts left as files: less
//!   work than ours, so a ratio ≥ 1.0 means we are at least as fast while doing more);
//! - the export path: `docker create` + export through the API piped into GNU `tar -x`;
//! - a cache hit, and a bottle's private copy (`copy_tree`) against `cp -a`.
//!
//! Each timing is the median of `--runs` runs; page-cache state is the same for every contender.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde::Serialize;

use super::median;
use crate::docker::Engine;
use crate::image::cache::{Cache, CacheKey};
use crate::image::clone::copy_tree;
use crate::image::tree::remove_tree;
use crate::image::{Ownership, UnpackOptions, unpack_save};
use crate::output::Reporter;

/// What to measure.
#[derive(Clone, Debug)]
pub struct UnpackBench {
    /// An image reference in the local engine.
    pub image: String,
    /// Timed runs per contender (the median is reported).
    pub runs: usize,
    /// Where scratch trees go (default: the temp dir).
    pub scratch: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Timing {
    name: &'static str,
    seconds: f64,
    /// Uncompressed layer bytes per second (0 where it does not apply).
    mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct UnpackReport {
    image: String,
    layers: usize,
    layer_bytes: u64,
    runs: usize,
    timings: Vec<Timing>,
    /// krbottle throughput ÷ GNU tar throughput (target ≥ 1.0).
    ratio_vs_gnu_tar: f64,
    /// krbottle throughput ÷ export-path throughput (target ≥ 2.0).
    ratio_vs_export: f64,
    /// bottle copy time ÷ `cp -a` time (lower is better).
    copy_ratio_vs_cp: f64,
    cache_hit_micros: f64,
}

/// Times `f` on a fresh destination `runs` times (each removed afterwards); the median.
fn time_runs(
    runs: usize,
    scratch: &Path,
    mut f: impl FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let dest = scratch.join(format!("run-{i}"));
        let t = Instant::now();
        f(&dest)?;
        times.push(t.elapsed());
        remove_tree(&dest).with_context(|| format!("cleaning {}", dest.display()))?;
    }
    Ok(median(times))
}

/// Runs the bench. The timed work is blocking and runs on a blocking thread; the export
/// contender's containers are created and removed through the engine around it.
pub async fn run(opts: &UnpackBench, reporter: &Reporter) -> anyhow::Result<UnpackReport> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let engine = Engine::connect().await?;
    let info = engine.inspect(&opts.image).await?;
    let work = tempfile::Builder::new()
        .prefix("krbottle-bench-")
        .tempdir_in(opts.scratch.as_deref().unwrap_or(&std::env::temp_dir()))
        .context("cannot create the scratch dir (pick another with --scratch)")?;
    let save_path = work.path().join("save.tar");
    reporter.status(format!("saving {} (not timed)", opts.image));
    let (e, image, path) = (engine.clone(), opts.image.clone(), save_path.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        io::copy(&mut e.save(&image), &mut File::create(&path)?)?;
        Ok(())
    })
    .await??;
    let layer_files = extract_layer_files(&save_path, &work.path().join("layers"))?;
    let scratch = work.path().join("out");
    std::fs::create_dir(&scratch)?;
    let runs = opts.runs;

    // The export path's containers, one per run, created before timing starts would not be
    // fair (creation is part of the path): each run creates its own, inside the timed closure,
    // through the runtime handle of this blocking thread's runtime.
    let handle = tokio::runtime::Handle::current();
    let (s, e, image) = (scratch.clone(), engine.clone(), opts.image.clone());
    let reporter2 = reporter.clone();
    let timed = tokio::task::spawn_blocking(move || {
        time_all(
            &save_path,
            &layer_files,
            &s,
            runs,
            &e,
            &image,
            &handle,
            &reporter2,
        )
    })
    .await??;

    // Cache hit: fill a private cache once, then time lookups.
    let cache = Cache::at(work.path().join("cache"));
    let key =
        CacheKey::new(&info.id, Ownership::Root).context("image ID is not a sha256 digest")?;
    let opts_unpack = UnpackOptions::default();
    let save = work.path().join("save.tar");
    let (entry, _) = cache.get_or_fill(&key, |dest| {
        unpack_save(
            File::open(&save)?,
            dest,
            &opts_unpack,
            &ProgressBar::hidden(),
        )
        .map(|s| (info.tags.clone(), s))
        .map_err(io::Error::other)
    })?;
    let hits: Vec<Duration> = (0..101)
        .map(|_| {
            let t = Instant::now();
            let found = cache.get_or_fill(&key, |_| -> Result<_, io::Error> {
                unreachable!("the entry exists")
            });
            let d = t.elapsed();
            found.map(|_| d)
        })
        .collect::<Result<_, _>>()?;
    let hit = median(hits);

    reporter.status("timing a bottle's private copy against cp -a");
    let copy = time_runs(runs, &scratch, |dest| {
        copy_tree(&entry.rootfs, dest, &ProgressBar::hidden())?;
        Ok(())
    })?;
    let cp = time_runs(runs, &scratch, |dest| {
        let status = Command::new("cp")
            .arg("-a")
            .arg(&entry.rootfs)
            .arg(dest)
            .status()?;
        if !status.success() {
            bail!("cp -a failed");
        }
        Ok(())
    })?;

    let Timed {
        ours,
        gnu,
        export,
        layer_bytes,
        layers,
    } = timed;
    let mbps = |d: Duration| layer_bytes as f64 / d.as_secs_f64() / 1e6;
    let timing = |name, d: Duration| Timing {
        name,
        seconds: d.as_secs_f64(),
        mb_per_s: mbps(d),
    };
    Ok(UnpackReport {
        image: opts.image.clone(),
        layers,
        layer_bytes,
        runs,
        timings: vec![
            timing("krbottle unpack (verify + whiteouts + merge)", ours),
            timing("GNU tar -x of the layers", gnu),
            timing("docker create + export + tar -x", export),
            timing("bottle copy (copy_tree)", copy),
            timing("cp -a", cp),
        ],
        ratio_vs_gnu_tar: gnu.as_secs_f64() / ours.as_secs_f64(),
        ratio_vs_export: export.as_secs_f64() / ours.as_secs_f64(),
        copy_ratio_vs_cp: copy.as_secs_f64() / cp.as_secs_f64(),
        cache_hit_micros: hit.as_secs_f64() * 1e6,
    })
}

/// The three unpack contenders' medians.
struct Timed {
    ours: Duration,
    gnu: Duration,
    export: Duration,
    layer_bytes: u64,
    layers: usize,
}

#[allow(clippy::too_many_arguments)]
fn time_all(
    save_path: &Path,
    layer_files: &[PathBuf],
    scratch: &Path,
    runs: usize,
    engine: &Engine,
    image: &str,
    handle: &tokio::runtime::Handle,
    reporter: &Reporter,
) -> anyhow::Result<Timed> {
    let opts = UnpackOptions::default();
    let mut layer_bytes = 0;
    reporter.status("timing krbottle unpack");
    let ours = time_runs(runs, scratch, |dest| {
        let summary = unpack_save(File::open(save_path)?, dest, &opts, &ProgressBar::hidden())?;
        layer_bytes = summary.bytes;
        Ok(())
    })?;

    reporter.status("timing GNU tar -x of the layer files");
    let gnu = time_runs(runs, scratch, |dest| {
        std::fs::create_dir(dest)?;
        for layer in layer_files {
            let status = Command::new("tar")
                .args(["-x", "--numeric-owner", "-p", "-f"])
                .arg(layer)
                .arg("-C")
                .arg(dest)
                .stderr(Stdio::null())
                .status()
                .context("cannot run GNU tar")?;
            if !status.success() {
                bail!("tar -x {} failed", layer.display());
            }
        }
        Ok(())
    })?;

    reporter.status("timing docker create + export + tar -x");
    let export = time_runs(runs, scratch, |dest| {
        std::fs::create_dir(dest)?;
        let mut tar = Command::new("tar")
            .args(["-x", "--numeric-owner", "-p", "-C"])
            .arg(dest)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run GNU tar")?;
        let mut stdin = tar.stdin.take().context("tar stdin")?;
        // This is a blocking thread of the runtime, not a task: waiting on the engine here is
        // what the user's `docker create` waits for too.
        let mut export = handle.block_on(engine.export_filesystem(image))?;
        let mut reader = export.take_reader().context("the export stream")?;
        io::copy(&mut reader, &mut stdin)?;
        drop(stdin);
        drop(reader);
        handle.block_on(export.remove());
        if !tar.wait()?.success() {
            bail!("tar -x of the export failed");
        }
        Ok(())
    })?;
    Ok(Timed {
        ours,
        gnu,
        export,
        layer_bytes,
        layers: layer_files.len(),
    })
}

impl crate::bench::Report for UnpackReport {
    fn print(&self) {
        println!(
            "bench unpack {} ({} layers, {:.1} MB uncompressed, median of {} runs)",
            self.image,
            self.layers,
            self.layer_bytes as f64 / 1e6,
            self.runs
        );
        for t in &self.timings {
            println!(
                "  {:<46} {:>8.3} s {:>8.1} MB/s",
                t.name, t.seconds, t.mb_per_s
            );
        }
        println!(
            "  throughput vs GNU tar -x:        {:.2}x (target >= 1.0)",
            self.ratio_vs_gnu_tar
        );
        println!(
            "  throughput vs export + tar -x:   {:.2}x (target >= 2.0)",
            self.ratio_vs_export
        );
        println!(
            "  bottle copy time vs cp -a:       {:.2}x",
            self.copy_ratio_vs_cp
        );
        println!(
            "  cache hit:                       {:.0} µs",
            self.cache_hit_micros
        );
    }
}

/// Writes each layer blob of a saved image to its own file, in stack order, using the
/// `manifest.json` that both save layouts carry.
fn extract_layer_files(save: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut manifest: Option<Vec<u8>> = None;
    let mut archive = tar::Archive::new(File::open(save)?);
    let mut stored = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name == "manifest.json" {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf)?;
            manifest = Some(buf);
        } else if entry.header().entry_type().is_file() && entry.size() > 0 {
            let file = dir.join(name.replace('/', "_"));
            io::copy(&mut entry, &mut File::create(&file)?)?;
            stored.push((name, file));
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest.context("saved image has no manifest.json")?)?;
    let layers = manifest[0]["Layers"]
        .as_array()
        .context("manifest.json has no Layers")?;
    layers
        .iter()
        .map(|l| {
            let l = l.as_str().unwrap_or_default();
            stored
                .iter()
                .find(|(name, _)| name == l)
                .map(|(_, f)| f.clone())
                .with_context(|| format!("layer {l} missing from the save"))
        })
        .collect()
}
