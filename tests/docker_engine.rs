//! The Docker API client against the real engine: build, inspect, streamed save, export.

mod common;

use std::io::Read;

use common::{BASE_IMAGE, require_docker};
use indicatif::ProgressBar;
use krbottle::docker::{DockerError, Engine};

fn entry_names(reader: impl Read) -> Vec<String> {
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn build_inspect_save_and_export_through_the_api() {
    if !require_docker("build_inspect_save_and_export_through_the_api") {
        return;
    }
    let engine = Engine::connect().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nCOPY hello /hello\nRUN echo built > /built\n"),
    )
    .unwrap();
    std::fs::write(ctx.path().join("hello"), "hi\n").unwrap();
    let tag = "krbottle-test/engine:latest";
    let mut lines = Vec::new();
    let id = engine
        .build(ctx.path(), None, tag, &ProgressBar::hidden(), |l| {
            lines.push(l.to_string())
        })
        .unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(lines.iter().any(|l| l.contains("COPY hello")), "{lines:?}");

    let info = engine.inspect(tag).unwrap();
    assert_eq!(info.id, id);
    let base = engine.inspect(BASE_IMAGE).unwrap();
    assert_eq!(info.diff_ids.len(), base.diff_ids.len() + 2);
    assert!(info.tags.iter().any(|t| t == tag));

    let saved = entry_names(engine.save(tag));
    assert!(saved.iter().any(|n| n == "manifest.json"), "{saved:?}");
    let layers = saved
        .iter()
        .filter(|n| n.ends_with("layer.tar") || n.starts_with("blobs/"))
        .count();
    assert!(layers >= info.diff_ids.len(), "{saved:?}");

    let exported = entry_names(engine.export_filesystem(tag).unwrap());
    assert!(exported.iter().any(|n| n == "hello"), "export lacks /hello");
    assert!(exported.iter().any(|n| n == "built"), "export lacks /built");
}

#[test]
fn errors_name_the_image_or_the_failing_step() {
    if !require_docker("errors_name_the_image_or_the_failing_step") {
        return;
    }
    let engine = Engine::connect().unwrap();
    let err = engine
        .inspect("krbottle-test/does-not-exist:nope")
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
    let err = engine
        .build(
            ctx.path(),
            None,
            "krbottle-test/fails:latest",
            &ProgressBar::hidden(),
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, DockerError::Build { .. }), "{err:?}");
    assert!(
        err.to_string().contains("exit 3") || err.to_string().contains("code: 3"),
        "{err}"
    );
}
