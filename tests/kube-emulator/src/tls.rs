//! The emulator's PKI: a CA generated per run, a serving certificate for the API address signed
//! by it, and client certificates it issues for certificate logins. The TLS acceptor asks for
//! a client certificate but does not require one (bearer-token clients send none), and accepts
//! only certificates its own CA signed.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::kubeconfig::{KubeCluster, KubeContext, KubeUser, Kubeconfig};

/// The generated CA and serving certificate.
pub struct Pki {
    /// The CA certificate, PEM (goes into kubeconfigs).
    pub ca_pem: String,
    /// The server's TLS configuration.
    pub server: Arc<rustls::ServerConfig>,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate and its key, PEM, as a kubeconfig's `client-certificate-data` and
/// `client-key-data` carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The user it names (its subject's common name).
    pub user: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER (what the TLS handshake shows).
    pub der: Vec<u8>,
}

/// The names a serving certificate carries besides the API address, as a cluster's does (the
/// in-cluster DNS names among them).
const SERVER_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

impl Pki {
    /// A new CA and a certificate for `addr`'s IP (and `localhost` and the in-cluster names).
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
        let mut params = CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec())?;
        params.subject_alt_names.push(SanType::IpAddress(addr.ip()));
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let clients =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        // HTTP/1.1 only: watch streams and WebSocket upgrades ride on it, as kube-rs expects.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
            issuer,
        })
    }

    /// A client certificate for `user` (its common name), signed by the CA.
    pub fn issue_client_certificate(&self, user: &str) -> anyhow::Result<ClientCertificate> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCertificate {
            user: user.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
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
    Kubeconfig::default()
        .context(KubeContext {
            name: context.to_owned(),
            cluster: KubeCluster::new("erlbridge-test", server, ca_pem),
            user: KubeUser::token("tester", token),
            namespace: namespace.to_owned(),
        })
        .to_yaml()
}
