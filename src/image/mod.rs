//! From a Docker image to a root filesystem libkrun can boot.
//!
//! `layout` reads a `docker save` stream (Docker's `manifest.json` layout or OCI's `index.json`),
//! `unpack` turns its layers into a directory tree with the image's ownership.
