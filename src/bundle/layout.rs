//! The bundle container's fixed layout: where its files are mounted, which ports its daemons
//! listen on, and the labels that tie Docker objects to a bottle. Defined here once; the host
//! side (`container`) and the inside (`init`, the daemons) both read these.

/// Where the krbottle binary is in the bundle image.
pub const BINARY: &str = "/usr/local/bin/krbottle";
/// Directory of the bundle's read-only configuration (mounted from the host).
pub const CONFIG_DIR: &str = "/etc/krbottle";
/// File names inside [`CONFIG_DIR`] (and inside the bottle's host-side bundle directory).
pub const GATEWAY_CONFIG_FILE: &str = "gateway.json";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// The gateway's port inside the container (published on a random `127.0.0.1` host port).
pub const GATEWAY_PORT: u16 = 8888;

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

/// The daemons a bundle can run. git-gate and supervise come later; each is optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Daemon {
    Gateway,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Gateway => "gateway",
        }
    }

    pub fn parse(name: &str) -> Option<Daemon> {
        match name {
            "gateway" => Some(Daemon::Gateway),
            _ => None,
        }
    }

    /// The port the daemon listens on inside the container.
    pub fn port(self) -> u16 {
        match self {
            Daemon::Gateway => GATEWAY_PORT,
        }
    }

    /// Arguments to the krbottle binary that run this daemon with its config in `config_dir`.
    pub fn args(self, config_dir: &str) -> Vec<String> {
        match self {
            Daemon::Gateway => vec![
                "bundle".into(),
                "gateway".into(),
                "--config".into(),
                format!("{config_dir}/{GATEWAY_CONFIG_FILE}"),
            ],
        }
    }
}

/// The container name of a bottle's bundle.
pub fn container_name(bottle: &str) -> String {
    format!("krbottle-bundle-{bottle}")
}

/// The Docker network of a bottle's bundle.
pub fn network_name(bottle: &str) -> String {
    format!("krbottle-{bottle}")
}
