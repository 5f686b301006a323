//! A daemon's config file: JSON, written on the host by the daemon's table line
//! ([`super::DaemonSpec::config`]) and read back by the daemon when it starts. Names only,
//! never secrets (those reach a daemon through its environment).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A daemon's config file could not be written, read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("Cannot read the {daemon} config {}; was the bundle started by this krbottle?", path.display())]
    Read {
        daemon: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The {daemon} config {} is invalid; start the bundle again with this krbottle to rewrite it", path.display())]
    Parse {
        daemon: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Cannot write the {daemon} config")]
    Write {
        daemon: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl ConfigFileError {
    /// The daemon whose config it is.
    pub fn daemon(&self) -> &'static str {
        match self {
            ConfigFileError::Read { daemon, .. }
            | ConfigFileError::Parse { daemon, .. }
            | ConfigFileError::Write { daemon, .. } => daemon,
        }
    }
}

/// Reads the `daemon`'s config of type `T` at `path`.
pub fn load<T: DeserializeOwned>(daemon: &'static str, path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read(path).map_err(|source| ConfigFileError::Read {
        daemon,
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ConfigFileError::Parse {
        daemon,
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of the `daemon`'s config file for `config`.
pub fn to_json<T: Serialize>(daemon: &'static str, config: &T) -> Result<Vec<u8>, ConfigFileError> {
    serde_json::to_vec_pretty(config).map_err(|source| ConfigFileError::Write { daemon, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Demo {
        name: String,
    }

    #[test]
    fn round_trips_and_names_the_daemon_and_the_file_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.json");
        let demo = Demo { name: "b".into() };
        std::fs::write(&path, to_json("demo", &demo).unwrap()).unwrap();
        assert_eq!(load::<Demo>("demo", &path).unwrap(), demo);

        let missing = load::<Demo>("demo", &dir.path().join("none.json")).unwrap_err();
        assert!(
            matches!(missing, ConfigFileError::Read { .. }),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("none.json"), "{missing}");

        std::fs::write(&path, b"{\"name\": 3}").unwrap();
        let bad = load::<Demo>("demo", &path).unwrap_err();
        assert!(matches!(bad, ConfigFileError::Parse { .. }), "{bad:?}");
        assert!(bad.to_string().starts_with("The demo config "), "{bad}");
    }
}
