//! Connections from the gateway to upstreams: resolution (pinned names first, then the
//! resolver, refusing non-public answers), TCP connect, and TLS verified against the webpki
//! roots plus an optional extra CA file, with HTTP/2 or HTTP/1.1 chosen by ALPN.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::idle::{Activity, IdleIo};
use super::{BoxError, Shared};
use crate::net::host::{Host, is_public};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to a non-public address ({ip}); list it as pinned if intended")]
    NotPublic { host: String, ip: IpAddr },
    #[error("cannot connect to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {host} failed")]
    Http {
        host: String,
        #[source]
        source: hyper::Error,
    },
}

impl Shared {
    /// Resolves and connects to an allowed host. Call only after the policy allowed `host`.
    pub(super) async fn dial(&self, host: &Host, port: u16) -> Result<TcpStream, DialError> {
        let addrs: Vec<SocketAddr> = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Domain(name) => match self.pinned.get(name) {
                Some(ip) => vec![SocketAddr::new(*ip, port)],
                None => {
                    let resolve = |source| DialError::Resolve {
                        host: name.clone(),
                        source,
                    };
                    let addrs = self.resolver.lookup(name, port).await.map_err(resolve)?;
                    if addrs.is_empty() {
                        return Err(resolve(std::io::ErrorKind::NotFound.into()));
                    }
                    // One private answer taints the set: a rebinding resolver mixes them.
                    let internal = self.internal.contains(name);
                    if let Some(bad) = addrs.iter().find(|a| !internal && !is_public(a.ip())) {
                        return Err(DialError::NotPublic {
                            host: name.clone(),
                            ip: bad.ip(),
                        });
                    }
                    addrs
                }
            },
        };
        let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::ErrorKind::TimedOut.into(),
            }
        }
        Err(DialError::Connect {
            host: host.to_string(),
            port,
            source: last,
        })
    }

    /// A TLS connection to a route's upstream, with an HTTP client on top. Its traffic counts
    /// as the client connection's `activity`.
    pub(super) async fn connect_tls(
        &self,
        host: &str,
        port: u16,
        activity: std::sync::Arc<Activity>,
    ) -> Result<Sender, DialError> {
        let tcp = IdleIo::new(
            self.dial(&Host::Domain(host.to_string()), port).await?,
            activity,
        );
        let tls_err = |source| DialError::Tls {
            host: host.to_string(),
            source,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| tls_err(std::io::Error::other(e)))?;
        let connector = tokio_rustls::TlsConnector::from(self.upstream_tls.clone());
        let tls = connector.connect(name, tcp).await.map_err(tls_err)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let http_err = |source| DialError::Http {
            host: host.to_string(),
            source,
        };
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http_err)?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(http_err)?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }
}

pub(super) enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub(super) fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    pub(super) async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, BoxError> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                Ok(s.send_request(req).await?)
            }
            Sender::H2(s) => {
                s.ready().await?;
                Ok(s.send_request(req).await?)
            }
        }
    }
}

/// The client TLS config for route upstreams.
pub fn upstream_tls_config(
    extra_ca: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(std::io::Error::other)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        if certs.is_empty() {
            return Err(std::io::Error::other("no PEM certificate in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(std::io::Error::other)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
