//! The bottle's certificate authority: one per bottle, ECDSA P-256, minted with rcgen.
//!
//! The key is written with mode 0600 to a temporary file that is renamed into place, so it is
//! never readable by others nor half-written. The gateway signs leaf certificates for route
//! hosts with it; the guest only ever receives the certificate. The issuer name is a function
//! of the bottle name, so the gateway can sign with the key alone (no certificate parser).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::sys::fs::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Cannot generate a certificate for {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("Cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM private key; recreate the bottle's CA", path.display())]
    ParseKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
}

/// A bottle's CA: its key and certificate.
pub struct BottleCa {
    bottle: String,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for BottleCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BottleCa")
            .field("bottle", &self.bottle)
            .finish_non_exhaustive()
    }
}

/// The CA's subject; also the issuer of every leaf.
fn ca_name(bottle: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "krbottle");
    dn.push(DnType::CommonName, format!("krbottle bottle {bottle} CA"));
    dn
}

fn ca_params(bottle: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(bottle);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params
}

/// The current UTC year, close enough for validity windows that start a year early.
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

impl BottleCa {
    /// Mints a new CA for `bottle`.
    pub fn generate(bottle: &str) -> Result<BottleCa, CaError> {
        let generate = |source| CaError::Generate {
            what: format!("the CA of bottle {bottle}"),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = ca_params(bottle).self_signed(&key).map_err(generate)?;
        Ok(BottleCa {
            bottle: bottle.to_string(),
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA written by [`BottleCa::write`].
    pub fn load(bottle: &str, cert_path: &Path, key_path: &Path) -> Result<BottleCa, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|source| CaError::ParseKey {
            path: key_path.to_path_buf(),
            source,
        })?;
        Ok(BottleCa {
            bottle: bottle.to_string(),
            key,
            cert_pem,
        })
    }

    /// Writes the certificate (mode 0644) and the key (mode 0600), each atomically.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        let write = |path: &Path, data: &[u8], mode| {
            write_atomic(path, data, mode).map_err(|source| CaError::Write {
                path: path.to_path_buf(),
                source,
            })
        };
        write(key_path, self.key.serialize_pem().as_bytes(), 0o600)?;
        write(cert_path, self.cert_pem.as_bytes(), 0o644)
    }

    /// The CA certificate, for the guest's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A fresh leaf certificate chain and key for `host` (a canonical domain name).
    pub fn mint_leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let generate = |source| CaError::Generate {
            what: host.to_string(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(generate)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let year = current_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 1, 12, 31);
        let issuer = Issuer::new(ca_params(&self.bottle), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(generate)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn write_then_load_signs_leaves_the_same_ca_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        BottleCa::generate("dev")
            .unwrap()
            .write(&cert, &key)
            .unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ca = BottleCa::load("dev", &cert, &key).unwrap();
        assert!(!ca.cert_pem().contains("PRIVATE"));

        // The leaf chains to the CA certificate on disk, as a TLS client checks it.
        let (chain, _key) = ca.mint_leaf("api.example.com").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let name = rustls_pki_types::ServerName::try_from("api.example.com").unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&chain[0], &[], &name, &[], now)
            .unwrap();
        let other = rustls_pki_types::ServerName::try_from("evil.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(&chain[0], &[], &other, &[], now)
                .is_err()
        );
    }
}
