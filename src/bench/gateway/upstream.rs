//! The bench's HTTPS upstream on 127.0.0.1: a test CA and leaf minted with rcgen, HTTP/1.1,
//! a small and a large response, and the check that keeps a non-intercepting peer honest.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::{
    INJECTED_HEADER, LARGE_BYTES, LARGE_PATH, ROUTE_HOST, SMALL_BYTES, SMALL_PATH, SPLICE_HOST,
    TOKEN,
};

/// The upstream's test CA and its leaf for both bench names and 127.0.0.1.
pub(super) struct UpstreamPki {
    pub(super) ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl UpstreamPki {
    pub(super) fn mint() -> anyhow::Result<UpstreamPki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "krbottle bench upstream CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params =
            CertificateParams::new(vec![SPLICE_HOST.to_owned(), ROUTE_HOST.to_owned()])?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(UpstreamPki {
            ca_pem: ca_cert.pem(),
            leaf: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        })
    }

    pub(super) fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(self.leaf_key.clone().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], key)?;
        // HTTP/1.1 only, so the gateway and mitmproxy speak the same protocol upstream.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The HTTPS upstream on 127.0.0.1; serves until the runtime ends.
pub(super) async fn spawn_upstream(tls: Arc<rustls::ServerConfig>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let small = Bytes::from(vec![b's'; SMALL_BYTES]);
    let large = Bytes::from(vec![b'L'; LARGE_BYTES]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, small, large) = (acceptor.clone(), small.clone(), large.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let (small, large) = (small.clone(), large.clone());
                    async move { Ok::<_, Infallible>(upstream_answer(&req, small, large)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The small or large body; marks a request that carried the route's token, and refuses one
/// that still carries a client credential (the proxy let it through).
fn upstream_answer<B>(req: &Request<B>, small: Bytes, large: Bytes) -> Response<Full<Bytes>> {
    let auth = req.headers().get(http::header::AUTHORIZATION);
    let injected = auth.is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    let mut resp = Response::builder();
    if auth.is_some() && !injected {
        return resp
            .status(StatusCode::UNAUTHORIZED)
            .body(Full::new(Bytes::from_static(
                b"client credential leaked upstream",
            )))
            .unwrap_or_default();
    }
    if injected {
        resp = resp.header(INJECTED_HEADER, "1");
    }
    let body = match req.uri().path() {
        SMALL_PATH => small,
        LARGE_PATH => large,
        _ => {
            return resp
                .status(StatusCode::NOT_FOUND)
                .body(Full::default())
                .unwrap_or_default();
        }
    };
    resp.body(Full::new(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    use crate::bench::gateway::CLIENT_CREDENTIAL;

    /// The upstream is what keeps a peer that does not intercept from posting a number.
    #[test]
    fn upstream_marks_the_token_and_refuses_a_leaked_client_credential() {
        let token = format!("Bearer {TOKEN}");
        let table: &[(Option<&str>, &str, StatusCode, bool, usize)] = &[
            (None, SMALL_PATH, StatusCode::OK, false, SMALL_BYTES),
            (None, LARGE_PATH, StatusCode::OK, false, LARGE_BYTES),
            (Some(&token), SMALL_PATH, StatusCode::OK, true, SMALL_BYTES),
            (
                Some(CLIENT_CREDENTIAL),
                SMALL_PATH,
                StatusCode::UNAUTHORIZED,
                false,
                33,
            ),
            (
                Some("Bearer other"),
                LARGE_PATH,
                StatusCode::UNAUTHORIZED,
                false,
                33,
            ),
            (None, "/other", StatusCode::NOT_FOUND, false, 0),
        ];
        let small = Bytes::from(vec![b's'; SMALL_BYTES]);
        let large = Bytes::from(vec![b'L'; LARGE_BYTES]);
        for &(auth, path, status, injected, len) in table {
            let mut req = Request::get(path);
            if let Some(auth) = auth {
                req = req.header(http::header::AUTHORIZATION, auth);
            }
            let resp = upstream_answer(&req.body(()).unwrap(), small.clone(), large.clone());
            assert_eq!(resp.status(), status, "{auth:?} {path}");
            assert_eq!(
                resp.headers().contains_key(INJECTED_HEADER),
                injected,
                "{auth:?} {path}"
            );
            let body = futures_util::FutureExt::now_or_never(resp.into_body().collect())
                .expect("a full body is ready")
                .unwrap()
                .to_bytes();
            assert_eq!(body.len(), len, "{auth:?} {path}");
        }
    }
}
