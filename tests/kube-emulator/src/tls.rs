//! The emulator's PKI and the kubeconfig that points at it: a CA generated per run, a serving
//! certificate for the API address signed by it, and bearer tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The generated CA and serving certificate.
pub struct Pki {
    /// The CA certificate, PEM (goes into kubeconfigs).
    pub ca_pem: String,
    /// The server's TLS configuration.
    pub server: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// A new CA and a certificate for `addr`'s IP (and `localhost`).
    pub fn generate(addr: SocketAddr) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "erlbridge test cluster CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "kubernetes".to_owned()])?;
        params.subject_alt_names.push(SanType::IpAddress(addr.ip()));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        // HTTP/1.1 only: watch streams and WebSocket upgrades ride on it, as kube-rs expects.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        })
    }
}

/// A kubeconfig (JSON, which is YAML) with one cluster, user and context.
pub fn kubeconfig(
    server: &str,
    ca_pem: &str,
    token: &str,
    namespace: &str,
    context: &str,
) -> String {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "erlbridge-test", "cluster": {
            "server": server,
            "certificate-authority-data": ca_data,
        }}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {
            "cluster": "erlbridge-test", "user": "tester", "namespace": namespace,
        }}],
        "current-context": context,
        "preferences": {},
    }))
    .unwrap_or_default()
}
