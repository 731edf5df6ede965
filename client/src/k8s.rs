//! The Kubernetes API client, found as kubectl finds it: `--kubeconfig` or `KUBECONFIG` or
//! `~/.kube/config`, `--context`, `-n/--namespace`, or the in-cluster service account in a CI
//! pod. The connection to the API server carries every port-forward, so it is built with
//! TCP_NODELAY (kube-rs's default client leaves Nagle on, which turns Erlang's small
//! request/response traffic into 40 ms delayed-ACK stalls).

use std::path::PathBuf;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where to find the cluster, as the user said it.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n/--namespace`.
    pub namespace: Option<String>,
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The named kubeconfig could not be read or parsed.
    #[error("cannot use the kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// kube's reason.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be found or used.
    #[error(
        "cannot find a usable Kubernetes configuration (checked KUBECONFIG, ~/.kube/config and \
         the in-cluster service account); pass --kubeconfig FILE or --context NAME"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The context or cluster entry is unusable.
    #[error("cannot use the kubeconfig's context")]
    Context(#[source] kube::config::KubeconfigError),
    /// The configuration asks for a proxy, which erlbridge does not support yet.
    #[error(
        "the Kubernetes configuration sends API traffic through the proxy {url} (its proxy-url, \
         or HTTPS_PROXY), which erlbridge cannot use yet; reach the API server directly \
         (remove proxy-url, unset HTTPS_PROXY, or list the API server's host in NO_PROXY)"
    )]
    Proxy {
        /// The proxy.
        url: String,
    },
    /// The TLS or auth setup of the client failed.
    #[error("cannot set up the connection to the Kubernetes API")]
    Client(#[source] kube::Error),
}

/// A Kubernetes client and the namespace to work in.
pub async fn connect(opts: &ClusterOptions) -> Result<(kube::Client, String), K8sError> {
    // Two TLS providers may be compiled in (kube's and ours); pick one, once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc_opts = KubeConfigOptions {
        context: opts.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| K8sError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kc_opts)
                .await
                .map_err(|source| K8sError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None if opts.context.is_some() => kube::Config::from_kubeconfig(&kc_opts)
            .await
            .map_err(K8sError::Context)?,
        None => kube::Config::infer().await.map_err(K8sError::Infer)?,
    };
    if let Some(ns) = &opts.namespace {
        config.default_namespace = ns.clone();
    }
    if let Some(url) = &config.proxy_url {
        return Err(K8sError::Proxy {
            url: url.to_string(),
        });
    }
    let namespace = config.default_namespace.clone();
    Ok((client(config).map_err(K8sError::Client)?, namespace))
}

/// kube-rs's client stack (base URI, auth, extra headers, the configuration's connect, read
/// and write timeouts) over a connector with TCP_NODELAY.
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::client::ClientBuilder::new(service, config.default_namespace).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_configured_connect_timeout_ends_a_silent_server() {
        // A listener that never accepts: the kernel completes the TCP handshake, the TLS one
        // never ends.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", silent.local_addr().unwrap());
        let mut config = kube::Config::new(url.parse().unwrap());
        config.connect_timeout = Some(Duration::from_millis(200));
        let client = client(config).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), client.apiserver_version())
            .await
            .expect("the client's own timeout ends the request, not this one");
        assert!(answer.is_err());
    }

    #[tokio::test]
    async fn a_proxy_is_refused_rather_than_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            r#"{"apiVersion": "v1", "kind": "Config",
              "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                            "proxy-url": "http://proxy.example:3128"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
              "current-context": "x"}"#,
        )
        .unwrap();
        let opts = ClusterOptions {
            kubeconfig: Some(path),
            ..ClusterOptions::default()
        };
        match connect(&opts).await {
            Err(e @ K8sError::Proxy { .. }) => {
                assert!(e.to_string().contains("http://proxy.example:3128"), "{e}");
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("the proxy was ignored"),
        }
    }
}
