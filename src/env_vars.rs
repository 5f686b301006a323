//! Every environment variable krbottle reads, declared once with what it does.

/// Directory for the image cache (unpacked root filesystems keyed by image ID).
/// Default: the user cache dir (`$XDG_CACHE_HOME/krbottle`, `~/Library/Caches/krbottle`).
pub const KRBOTTLE_CACHE_DIR: &str = "KRBOTTLE_CACHE_DIR";

/// When set (to anything), `image prepare` and `start` never read the engine's own layer
/// directories and take the portable route, the save stream (for tests and benchmarks).
pub const KRBOTTLE_NO_ENGINE_LAYER_DIRS: &str = "KRBOTTLE_NO_ENGINE_LAYER_DIRS";

/// When set (to anything), entries of the engine's layer directories are copied into the layer
/// cache instead of hard-linked to the engine's inodes (for tests and benchmarks).
pub const KRBOTTLE_NO_ENGINE_LINKS: &str = "KRBOTTLE_NO_ENGINE_LINKS";

/// Directory for per-bottle state (writable roots, metadata, locks).
/// Default: the user data dir (`$XDG_DATA_HOME/krbottle`, `~/Library/Application Support/krbottle`).
pub const KRBOTTLE_STATE_DIR: &str = "KRBOTTLE_STATE_DIR";

/// Log filter for debug logs on stderr (tracing `EnvFilter` syntax, e.g. `krbottle=debug`).
/// `-v`/`-vv` set a default; this variable overrides it.
pub const KRBOTTLE_LOG: &str = "KRBOTTLE_LOG";

/// Docker endpoint. Read by bollard's defaults: `unix:///var/run/docker.sock` when unset.
pub const DOCKER_HOST: &str = "DOCKER_HOST";

/// Set by CI. Tests that need a capability this machine is expected to have (Docker) fail
/// instead of skipping when it is set.
pub const CI: &str = "CI";

/// Path of the `libkrunfw` guest-kernel library to use instead of the one the loader finds
/// (beside the binary via its RUNPATH, then the system library path).
pub const KRBOTTLE_LIBKRUNFW: &str = "KRBOTTLE_LIBKRUNFW";

/// Internal, set by krbottle for its own re-executed children: `FD:NAMESPACES`, the socket of
/// the namespace handshake (`sys::userns`). Not for users.
pub const KRBOTTLE_NS_HANDSHAKE: &str = "KRBOTTLE_NS_HANDSHAKE";

/// Internal, set by krbottle for its `__vmm` child: the descriptor number of the control socket
/// (config in, endpoint listeners and status out; `vm::launch`). Not for users.
pub const KRBOTTLE_VMM_FD: &str = "KRBOTTLE_VMM_FD";

/// Path of mitmproxy's `mitmdump`, the peer of `krbottle bench gateway`. Default: `mitmdump` on
/// `PATH`. When neither exists the bench reports only the direct comparison.
pub const KRBOTTLE_MITMDUMP: &str = "KRBOTTLE_MITMDUMP";

/// Internal, set by `krbottle bench gateway` for the proxies it starts (the gateway daemon and
/// mitmdump's addon): the bench route's made-up token. Not for users.
pub const KRBOTTLE_BENCH_ROUTE_TOKEN: &str = "KRBOTTLE_BENCH_ROUTE_TOKEN";

/// Where the bundle image's krbottle binary comes from: `host` (this binary, copied in) or
/// `source` (compiled inside the image from the source every binary carries). Default: `host`
/// on Linux when the Docker engine has the same architecture, `source` otherwise (macOS).
pub const KRBOTTLE_BUNDLE_FROM: &str = "KRBOTTLE_BUNDLE_FROM";

/// The cargo profile of a `source` bundle build (default `release`; tests use `dev`).
pub const KRBOTTLE_BUNDLE_PROFILE: &str = "KRBOTTLE_BUNDLE_PROFILE";

/// A PEM file of CA certificates the `source` bundle build trusts for its downloads (rustup,
/// crates.io): needed behind a TLS-intercepting proxy. They stay in the build stage.
pub const KRBOTTLE_BUNDLE_BUILD_CA: &str = "KRBOTTLE_BUNDLE_BUILD_CA";

/// Where the bundle's daemons run: `docker` (the default: one container per bottle) or
/// `process` (child processes of krbottle on the host, for machines without a Docker engine,
/// like the emulated-hypervisor harness; the daemons then lack the container's isolation).
pub const KRBOTTLE_BUNDLE_RUNTIME: &str = "KRBOTTLE_BUNDLE_RUNTIME";

/// The login name, recorded as who answered a request (`krbottle approve` / `deny`). Default:
/// the numeric user id.
pub const USER: &str = "USER";

/// The host's search path: where `krbottle queue --watch` looks for `notify-send`.
pub const PATH: &str = "PATH";

/// Internal, set by git-gate for the git it runs for one push: the file its pre-receive hook
/// (`krbottle bundle git-hook`) appends the push's decision lines to. Not for users.
pub const KRBOTTLE_GIT_GATE_DECISIONS: &str = "KRBOTTLE_GIT_GATE_DECISIONS";

/// Set by krbottle (not read) for its macOS `__vmm` child: the directory of the libkrunfw it
/// found, so that libkrun's `dlopen` of the library by its bare name finds it there (dyld reads
/// this list when the process starts; it ignores it under the hardened runtime).
pub const DYLD_FALLBACK_LIBRARY_PATH: &str = "DYLD_FALLBACK_LIBRARY_PATH";
