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
use crate::cli::BenchUnpackArgs;
use crate::docker::Engine;
use crate::exit;
use crate::image::cache::{Cache, CacheKey, remove_tree};
use crate::image::clone::copy_tree;
use crate::image::unpack::{Ownership, UnpackOptions, unpack_save};
use crate::output::{Reporter, print_json};

#[derive(Debug, Serialize)]
struct Timing {
    name: &'static str,
    seconds: f64,
    /// Uncompressed layer bytes per second (0 where it does not apply).
    mb_per_s: f64,
}

#[derive(Debug, Serialize)]
struct UnpackReport {
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

pub(super) fn unpack(args: BenchUnpackArgs, reporter: &Reporter) -> anyhow::Result<u8> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let engine = Engine::connect()?;
    let info = engine.inspect(&args.image)?;
    let work = tempfile::Builder::new()
        .prefix("krbottle-bench-")
        .tempdir_in(args.scratch.as_deref().unwrap_or(&std::env::temp_dir()))
        .context("cannot create the scratch dir (pick another with --scratch)")?;
    let save_path = work.path().join("save.tar");
    reporter.status(format!("saving {} (not timed)", args.image));
    io::copy(
        &mut engine.save(&args.image),
        &mut File::create(&save_path)?,
    )?;
    let layer_files = extract_layer_files(&save_path, &work.path().join("layers"))?;

    let ownership = Ownership::Root;
    let opts = UnpackOptions {
        ownership,
        ..Default::default()
    };
    let scratch = work.path().join("out");
    std::fs::create_dir(&scratch)?;
    let mut layer_bytes = 0;

    reporter.status("timing krbottle unpack");
    let ours = time_runs(args.runs, &scratch, |dest| {
        let summary = unpack_save(File::open(&save_path)?, dest, &opts, &ProgressBar::hidden())?;
        layer_bytes = summary.bytes;
        Ok(())
    })?;

    reporter.status("timing GNU tar -x of the layer files");
    let gnu = time_runs(args.runs, &scratch, |dest| {
        std::fs::create_dir(dest)?;
        for layer in &layer_files {
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
    let export = time_runs(args.runs, &scratch, |dest| {
        std::fs::create_dir(dest)?;
        let mut tar = Command::new("tar")
            .args(["-x", "--numeric-owner", "-p", "-C"])
            .arg(dest)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run GNU tar")?;
        let mut stdin = tar.stdin.take().context("tar stdin")?;
        let mut reader = engine.export_filesystem(&args.image)?;
        io::copy(&mut reader, &mut stdin)?;
        drop(stdin);
        drop(reader);
        if !tar.wait()?.success() {
            bail!("tar -x of the export failed");
        }
        Ok(())
    })?;

    // Cache hit: fill a private cache once, then time lookups.
    let cache = Cache::at(work.path().join("cache"));
    let key = CacheKey::new(&info.id, "root").context("image ID is not a sha256 digest")?;
    let (entry, _) = cache.get_or_fill(&key, |dest| {
        unpack_save(File::open(&save_path)?, dest, &opts, &ProgressBar::hidden())
            .map(|s| {
                (
                    info.tags.clone(),
                    serde_json::to_value(s).unwrap_or_default(),
                )
            })
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
    let copy = time_runs(args.runs, &scratch, |dest| {
        copy_tree(&entry.rootfs, dest, &ProgressBar::hidden())?;
        Ok(())
    })?;
    let cp = time_runs(args.runs, &scratch, |dest| {
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

    let mbps = |d: Duration| layer_bytes as f64 / d.as_secs_f64() / 1e6;
    let report = UnpackReport {
        image: args.image.clone(),
        layers: layer_files.len(),
        layer_bytes,
        runs: args.runs,
        timings: vec![
            Timing {
                name: "krbottle unpack (verify + whiteouts + merge)",
                seconds: ours.as_secs_f64(),
                mb_per_s: mbps(ours),
            },
            Timing {
                name: "GNU tar -x of the layers",
                seconds: gnu.as_secs_f64(),
                mb_per_s: mbps(gnu),
            },
            Timing {
                name: "docker create + export + tar -x",
                seconds: export.as_secs_f64(),
                mb_per_s: mbps(export),
            },
            Timing {
                name: "bottle copy (copy_tree)",
                seconds: copy.as_secs_f64(),
                mb_per_s: mbps(copy),
            },
            Timing {
                name: "cp -a",
                seconds: cp.as_secs_f64(),
                mb_per_s: mbps(cp),
            },
        ],
        ratio_vs_gnu_tar: gnu.as_secs_f64() / ours.as_secs_f64(),
        ratio_vs_export: export.as_secs_f64() / ours.as_secs_f64(),
        copy_ratio_vs_cp: copy.as_secs_f64() / cp.as_secs_f64(),
        cache_hit_micros: hit.as_secs_f64() * 1e6,
    };
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "bench unpack {} ({} layers, {:.1} MB uncompressed, median of {} runs)",
            report.image,
            report.layers,
            layer_bytes as f64 / 1e6,
            report.runs
        );
        for t in &report.timings {
            println!(
                "  {:<46} {:>8.3} s {:>8.1} MB/s",
                t.name, t.seconds, t.mb_per_s
            );
        }
        println!(
            "  throughput vs GNU tar -x:        {:.2}x (target >= 1.0)",
            report.ratio_vs_gnu_tar
        );
        println!(
            "  throughput vs export + tar -x:   {:.2}x (target >= 2.0)",
            report.ratio_vs_export
        );
        println!(
            "  bottle copy time vs cp -a:       {:.2}x",
            report.copy_ratio_vs_cp
        );
        println!(
            "  cache hit:                       {:.0} µs",
            report.cache_hit_micros
        );
    }
    Ok(exit::OK)
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
