//! The Docker API client against the real engine: build, inspect, streamed save, export.

mod common;

use std::io::Read;

use common::{BASE_IMAGE, require_docker};
use krbottle::docker::{BuildRequest, DockerError, Engine, tar_context};

fn entry_names(reader: impl Read) -> Vec<String> {
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn build_request(dir: &std::path::Path, tag: &str) -> BuildRequest {
    BuildRequest {
        what: dir.display().to_string(),
        context_tar: tar_context(dir).unwrap(),
        tag: tag.to_string(),
        ..Default::default()
    }
}

#[test]
fn build_inspect_save_and_export_through_the_api() {
    if !require_docker("build_inspect_save_and_export_through_the_api") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt.block_on(Engine::connect()).unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\nCOPY hello /hello\nRUN echo built > /built && mkdir /w\nUSER 1000:1000\nWORKDIR /w\nENV A=1\nCMD [\"sh\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(ctx.path().join("hello"), "hi\n").unwrap();
    let tag = "krbottle-test/engine:latest";
    let mut lines = Vec::new();
    let id = rt
        .block_on(engine.build(build_request(ctx.path(), tag), |l| {
            lines.push(l.to_string())
        }))
        .unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(lines.iter().any(|l| l.contains("COPY hello")), "{lines:?}");

    let info = rt.block_on(engine.inspect(tag)).unwrap();
    assert_eq!(info.id, id);
    let base = rt.block_on(engine.inspect(BASE_IMAGE)).unwrap();
    assert_eq!(info.diff_ids.len(), base.diff_ids.len() + 2);
    assert!(info.tags.iter().any(|t| t == tag));
    assert_eq!(info.config.user, "1000:1000");
    assert_eq!(info.config.working_dir, "/w");
    assert_eq!(info.config.cmd, ["sh"]);
    assert!(
        info.config.env.iter().any(|e| e == "A=1"),
        "{:?}",
        info.config.env
    );

    // The streams are read on a blocking thread, as the unpacker reads them.
    let e = engine.clone();
    let saved = rt
        .block_on(async { tokio::task::spawn_blocking(move || entry_names(e.save(tag))).await })
        .unwrap();
    assert!(saved.iter().any(|n| n == "manifest.json"), "{saved:?}");
    let layers = saved
        .iter()
        .filter(|n| n.ends_with("layer.tar") || n.starts_with("blobs/"))
        .count();
    assert!(layers >= info.diff_ids.len(), "{saved:?}");

    let mut export = rt.block_on(engine.export_filesystem(tag)).unwrap();
    let reader = export.take_reader().unwrap();
    let exported = rt
        .block_on(async { tokio::task::spawn_blocking(move || entry_names(reader)).await })
        .unwrap();
    rt.block_on(export.remove());
    assert!(exported.iter().any(|n| n == "hello"), "export lacks /hello");
    assert!(exported.iter().any(|n| n == "built"), "export lacks /built");
}

#[test]
fn errors_name_the_image_or_the_failing_step() {
    if !require_docker("errors_name_the_image_or_the_failing_step") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt.block_on(Engine::connect()).unwrap();
    let err = rt
        .block_on(engine.inspect("krbottle-test/does-not-exist:nope"))
        .unwrap_err();
    assert!(matches!(err, DockerError::ImageNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("krbottle-test/does-not-exist:nope")
    );

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nRUN exit 3\n"),
    )
    .unwrap();
    let err = rt
        .block_on(engine.build(
            build_request(ctx.path(), "krbottle-test/fails:latest"),
            |_| {},
        ))
        .unwrap_err();
    assert!(matches!(err, DockerError::Build { .. }), "{err:?}");
    assert!(
        err.to_string().contains("exit 3") || err.to_string().contains("code: 3"),
        "{err}"
    );
}

#[test]
fn a_dockerfile_build_is_skipped_only_while_its_inputs_are_unchanged() {
    use krbottle::image::prepare::BUILD_INPUTS_LABEL;
    if !require_docker("a_dockerfile_build_is_skipped_only_while_its_inputs_are_unchanged") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt.block_on(Engine::connect()).unwrap();
    let base = "krbottle-test/skip-base:latest";
    let tag = "krbottle-test/skip:latest";
    common::docker_build(
        base,
        &format!("FROM {BASE_IMAGE}\nRUN echo one > /base\n"),
        &[],
    );
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY f /f\n"),
    )
    .unwrap();
    std::fs::write(ctx.path().join("f"), "first").unwrap();
    // `krbottle image build`, as `start` builds a Dockerfile agent; its ID, and what -v said.
    let prepare = |_: &Engine| {
        let (out, stdout, stderr) = common::run(common::krbottle().args([
            "-v",
            "image",
            "build",
            ctx.path().to_str().unwrap(),
            "--tag",
            tag,
            "--json",
        ]));
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            stderr.contains("is up to date"),
        )
    };

    let (first, skipped) = prepare(&engine);
    assert!(!skipped, "nothing to skip the first time");
    let labels = rt.block_on(engine.inspect(tag)).unwrap().labels;
    let hash = labels
        .get(BUILD_INPUTS_LABEL)
        .expect("the build's inputs label")
        .clone();

    // A decoy with the same label under the tag: a start that asked the engine to build would
    // get the real image back, so getting the decoy proves no build was asked for.
    let decoy_ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        decoy_ctx.path().join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nRUN echo decoy > /decoy\n"),
    )
    .unwrap();
    let mut decoy_req = build_request(decoy_ctx.path(), tag);
    decoy_req
        .labels
        .insert(BUILD_INPUTS_LABEL.to_string(), hash.clone());
    let decoy = rt.block_on(engine.build(decoy_req, |_| {})).unwrap();
    assert_ne!(decoy, first);
    assert_eq!(
        prepare(&engine),
        (decoy.clone(), true),
        "unchanged inputs: the tagged image is used as it is"
    );

    // A changed file of the context: built again, with the change.
    std::fs::write(ctx.path().join("f"), "second").unwrap();
    let (second, skipped) = prepare(&engine);
    assert!(!skipped);
    assert_ne!(second, decoy);
    assert_ne!(second, first);
    let changed = rt.block_on(engine.inspect(tag)).unwrap().labels[BUILD_INPUTS_LABEL].clone();
    assert_ne!(changed, hash);
    assert_eq!(prepare(&engine), (second.clone(), true), "and then kept");

    // A rebuilt base image under the same tag: built again, from the new base.
    common::docker_build(
        base,
        &format!("FROM {BASE_IMAGE}\nRUN echo two > /base\n"),
        &[],
    );
    let (third, skipped) = prepare(&engine);
    assert!(!skipped);
    assert_ne!(third, second, "a new base image is a new build");
    let out = std::process::Command::new("docker")
        .args(["run", "--rm", &third, "cat", "/base", "/f"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\nsecond");
    for image in [tag, base] {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", image])
            .output();
    }
}
