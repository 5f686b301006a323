//! The names and labels that tie Docker objects to a bottle, defined once. What the daemons
//! see inside the container (config dir, file names, ports) is theirs: `crate::daemon` and
//! `crate::ports`.

/// Where the krbottle binary is in the bundle image.
pub const BINARY: &str = "/usr/local/bin/krbottle";

/// Label carrying the bottle name, on the bundle's container and network.
pub const LABEL_BOTTLE: &str = "krbottle.bottle";
/// Label marking krbottle bundle objects (`gc` only ever looks at these).
pub const LABEL_ROLE: &str = "krbottle.role";
pub const ROLE_BUNDLE: &str = "bundle";
/// Label with the state directory that owns the object, so `gc` of one state directory never
/// removes another's bundles (parallel tests, several users).
pub const LABEL_STATE_DIR: &str = "krbottle.state-dir";
/// Label with the pid of the `krbottle` that created the object: a bundle without an up
/// record is only a leftover once that process is gone.
pub const LABEL_OWNER_PID: &str = "krbottle.owner-pid";
/// Label on the bundle image: the hash of its inputs.
pub const LABEL_IMAGE_INPUTS: &str = "krbottle.bundle.inputs";

/// The container name of a bottle's bundle.
pub fn container_name(bottle: &str) -> String {
    format!("krbottle-bundle-{bottle}")
}

/// The Docker network of a bottle's bundle.
pub fn network_name(bottle: &str) -> String {
    format!("krbottle-{bottle}")
}
