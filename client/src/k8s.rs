//! The Kubernetes API client, found as kubectl finds it: `--kubeconfig` or `KUBECONFIG` or
//! `~/.kube/config`, `--context`, `-n/--namespace`, or the in-cluster service account in a CI
//! pod. The connection to the API server carries every port-forward, so it is built with
//! TCP_NODELAY (kube-rs's default client leaves Nagle on, which turns Erlang's small
//! request/response traffic into 40 ms delayed-ACK stalls).
//!
//! No call waits for ever: connecting and every request are bounded by `--request-timeout`
//! ([`Kube::call`]); long-lived watches and port-forward streams are kept honest by TCP
//! keepalive. A failure is told plainly ([`ApiError`]): kube's own messages carry Debug dumps.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
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
    /// `--request-timeout`: how long connecting and each request may take (`None`: no bound).
    pub request_timeout: Option<Duration>,
}

/// `--request-timeout`: a bound, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout(pub Option<Duration>);

impl std::str::FromStr for RequestTimeout {
    type Err = String;

    fn from_str(text: &str) -> Result<RequestTimeout, String> {
        parse_timeout(text).map(RequestTimeout)
    }
}

/// Reads a `--request-timeout` as kubectl does: `10s`, `2m`, `1h`, a bare number of seconds,
/// or `0` for no bound.
pub fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    let bad = || {
        format!(
            "\"{text}\" is not a duration: use a number with a unit (10s, 2m, 1h), or 0 for none"
        )
    };
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// A Kubernetes client and what its failures are told with: the namespace to work in, the API
/// server's address and the bound on each request.
#[derive(Clone)]
pub struct Kube {
    /// The client.
    pub client: kube::Client,
    /// The namespace.
    pub namespace: String,
    /// The API server, as the configuration names it.
    pub url: String,
    /// How long a request may take.
    pub timeout: Option<Duration>,
}

impl Kube {
    /// The pods of the namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs one API call within the request timeout.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        let answer = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| self.failure(Failure::Timeout(limit)))?,
            None => call.await,
        };
        answer.map_err(|e| self.error(e))
    }

    /// Waits for `what` (a watch's first list, say) within the request timeout.
    pub async fn bounded<T, E>(
        &self,
        what: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, ApiError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, what)
                .await
                .map_err(|_| self.failure(Failure::Timeout(limit))),
            None => Ok(what.await),
        }
    }

    /// `e`, told with this API server's address. A connect that ran out of time is the same
    /// timeout as a request that did.
    pub fn error(&self, e: kube::Error) -> ApiError {
        match self.timeout {
            Some(limit) if timed_out(&e) => self.failure(Failure::Timeout(limit)),
            _ => self.failure(Failure::Kube(e)),
        }
    }

    fn failure(&self, failure: Failure) -> ApiError {
        ApiError {
            url: self.url.clone(),
            failure,
        }
    }
}

/// What went wrong with a call.
#[derive(Debug)]
pub enum Failure {
    /// No answer in time.
    Timeout(Duration),
    /// kube's error.
    Kube(kube::Error),
}

/// A failed call to the API server, told in one plain sentence with the server's address.
#[derive(Debug)]
pub struct ApiError {
    /// The API server.
    pub url: String,
    /// What went wrong.
    pub failure: Failure,
}

impl ApiError {
    /// The HTTP status the API server answered with, if it answered with an error.
    pub fn code(&self) -> Option<u16> {
        match &self.failure {
            Failure::Kube(kube::Error::Api(s)) => Some(s.code),
            Failure::Kube(kube::Error::UpgradeConnection(
                kube::client::UpgradeConnectionError::ProtocolSwitch(code),
            )) => Some(code.as_u16()),
            _ => None,
        }
    }

    /// Whether the API server refused the credentials or their rights (401, 403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self.code(), Some(401 | 403))
    }

    /// The API server's own message, when it sent a Status.
    pub fn message(&self) -> Option<&str> {
        match &self.failure {
            Failure::Kube(kube::Error::Api(s)) if !s.message.is_empty() => Some(&s.message),
            _ => None,
        }
    }
}

fn canonical(code: u16) -> String {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    format!("{code} {reason}").trim_end().to_owned()
}

/// Whether `e` is a connect or read that ran out of time.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tokio::time::error::Elapsed>()
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The innermost cause of `e`, which is what a person can act on ("Connection refused").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.url;
        match &self.failure {
            Failure::Timeout(limit) => write!(
                f,
                "the API server at {url} did not answer in {} s (--request-timeout)",
                limit.as_secs()
            ),
            // kube's marker for a body that is no Status (a proxy's or load balancer's page).
            Failure::Kube(kube::Error::Api(s)) if s.reason == "Failed to parse error data" => {
                let body: String = s
                    .message
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect();
                write!(f, "the API server at {url} answered {}", canonical(s.code))?;
                if !body.is_empty() {
                    write!(f, " ({body})")?;
                }
                Ok(())
            }
            Failure::Kube(kube::Error::Api(s)) => {
                write!(f, "the API server at {url} answered {}", canonical(s.code))?;
                if !s.message.is_empty() {
                    write!(f, ": {}", s.message)?;
                }
                Ok(())
            }
            Failure::Kube(kube::Error::UpgradeConnection(
                kube::client::UpgradeConnectionError::ProtocolSwitch(code),
            )) => write!(
                f,
                "the API server at {url} answered {} instead of opening the connection",
                canonical(code.as_u16())
            ),
            Failure::Kube(kube::Error::Auth(e)) => write!(
                f,
                "cannot log in to the API server at {url}: {}",
                root_cause(e)
            ),
            Failure::Kube(e) => {
                write!(f, "cannot reach the API server at {url}: {}", root_cause(e))
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The named kubeconfig could not be read or parsed.
    #[error("cannot use the kubeconfig {}: {reason}", .path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why, plainly.
        reason: String,
    },
    /// No configuration could be found or used.
    #[error(
        "cannot find a usable Kubernetes configuration (checked KUBECONFIG, ~/.kube/config and \
         the in-cluster service account: {0}); pass --kubeconfig FILE or --context NAME"
    )]
    Infer(String),
    /// The context or cluster entry is unusable.
    #[error("cannot use the kubeconfig's context: {0}")]
    Context(String),
    /// KUBECONFIG lists files, and none of them exists.
    #[error(
        "none of the files KUBECONFIG lists exists ({}); fix KUBECONFIG or pass --kubeconfig FILE",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoneListed(Vec<PathBuf>),
    /// The configuration names a proxy erlbridge cannot use.
    #[error(
        "the proxy {url} (the kubeconfig's proxy-url, or HTTPS_PROXY) is not an http:// proxy; \
         erlbridge tunnels through HTTP CONNECT proxies only"
    )]
    Proxy {
        /// The proxy.
        url: String,
    },
    /// The TLS or auth setup of the client failed.
    #[error("cannot set up the connection to the Kubernetes API")]
    Client(#[source] kube::Error),
}

/// What is wrong with a kubeconfig, in a few plain words (kube's own text repeats the path in
/// Debug quotes); `with_path` names the file where the caller's message does not.
fn kubeconfig_reason(e: &kube::config::KubeconfigError, with_path: bool) -> String {
    use kube::config::KubeconfigError as K;
    match e {
        K::ReadConfig(io, path) if with_path => format!("cannot read {}: {io}", path.display()),
        K::ReadConfig(io, _) => io.to_string(),
        K::Parse(e) => format!("it is not a kubeconfig ({e})"),
        K::LoadContext(name) => format!("it has no context {name}"),
        K::LoadClusterOfContext(name) => format!("it has no cluster {name}"),
        e => root_cause(e),
    }
}

/// The environment variable listing kubeconfig files.
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";

/// What `KUBECONFIG` lists.
#[derive(Debug)]
pub enum Listed {
    /// The files that exist, merged.
    Merged(Box<Kubeconfig>),
    /// None of the files exists (they are named).
    None(Vec<PathBuf>),
}

/// The files `KUBECONFIG` lists, merged as kubectl merges them: in order, the first file to set
/// a value or a named entry wins; a file that does not exist is skipped, one that exists but
/// cannot be read or parsed is an error that names it. `None` when KUBECONFIG is unset or
/// empty.
pub fn from_env() -> Result<Option<Listed>, K8sError> {
    match std::env::var_os(ENV_KUBECONFIG) {
        Some(value) => listed(&value),
        None => Ok(None),
    }
}

/// The files of a `KUBECONFIG` value (`a:b:c`), merged ([`from_env`]).
pub fn listed(value: &std::ffi::OsStr) -> Result<Option<Listed>, K8sError> {
    let paths: Vec<PathBuf> = std::env::split_paths(value)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    if paths.is_empty() {
        return Ok(None);
    }
    let mut merged: Option<Kubeconfig> = None;
    for path in &paths {
        if matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            tracing::debug!(path = %path.display(), "KUBECONFIG lists a file that does not exist; skipped");
            continue;
        }
        let invalid = |e: kube::config::KubeconfigError| K8sError::Kubeconfig {
            path: path.clone(),
            reason: kubeconfig_reason(&e, false),
        };
        let next = Kubeconfig::read_from(path).map_err(invalid)?;
        merged = Some(match merged {
            Some(so_far) => so_far.merge(next).map_err(invalid)?,
            None => next,
        });
    }
    Ok(Some(match merged {
        Some(kubeconfig) => Listed::Merged(Box::new(kubeconfig)),
        None => Listed::None(paths),
    }))
}

/// A Kubernetes client, as the options say.
pub async fn connect(opts: &ClusterOptions) -> Result<Kube, K8sError> {
    // Two TLS providers may be compiled in (kube's and ours); pick one, once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc_opts = KubeConfigOptions {
        context: opts.context.clone(),
        ..KubeConfigOptions::default()
    };
    // KUBECONFIG counts only without --kubeconfig, as for kubectl.
    let listed = match &opts.kubeconfig {
        Some(_) => None,
        None => from_env()?,
    };
    let mut config = match (&opts.kubeconfig, listed) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| K8sError::Kubeconfig {
                path: path.clone(),
                reason: kubeconfig_reason(&e, false),
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kc_opts)
                .await
                .map_err(|e| K8sError::Kubeconfig {
                    path: path.clone(),
                    reason: kubeconfig_reason(&e, false),
                })?
        }
        (None, Some(Listed::Merged(kubeconfig))) => {
            kube::Config::from_custom_kubeconfig(*kubeconfig, &kc_opts)
                .await
                .map_err(|e| K8sError::Context(kubeconfig_reason(&e, true)))?
        }
        // KUBECONFIG names only files that do not exist: no kubeconfig at all, as for kubectl;
        // in a pod, the service account still applies.
        (None, Some(Listed::None(missing))) => match (&opts.context, kube::Config::incluster()) {
            (None, Ok(config)) => config,
            (_, _) => return Err(K8sError::NoneListed(missing)),
        },
        (None, None) if opts.context.is_some() => kube::Config::from_kubeconfig(&kc_opts)
            .await
            .map_err(|e| K8sError::Context(kubeconfig_reason(&e, true)))?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            use std::error::Error as _;
            K8sError::Infer(
                e.source()
                    .and_then(|s| s.downcast_ref::<kube::config::KubeconfigError>())
                    .map_or_else(|| root_cause(&e), |k| kubeconfig_reason(k, true)),
            )
        })?,
    };
    if let Some(ns) = &opts.namespace {
        config.default_namespace = ns.clone();
    }
    config.connect_timeout = opts.request_timeout;
    let proxy = proxy_for(&config)?;
    let namespace = config.default_namespace.clone();
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    Ok(Kube {
        client: client(config, proxy).map_err(K8sError::Client)?,
        namespace,
        url,
        timeout: opts.request_timeout,
    })
}

/// How long a connection may stay silent before the kernel probes it, how often it probes and
/// how many unanswered probes end it: a watch or port-forward on a connection the network lost
/// fails within about a minute instead of hanging.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(30), Duration::from_secs(10), 3);

/// The HTTP CONNECT proxy to reach the API server through, if any: the kubeconfig's
/// `proxy-url` for its cluster, else HTTPS_PROXY (or ALL_PROXY) unless NO_PROXY names the
/// API server's host, as kubectl and curl read them.
pub fn proxy_for(config: &kube::Config) -> Result<Option<Intercept>, K8sError> {
    // kube's configuration folds HTTPS_PROXY into proxy_url: tell the two apart, since only the
    // environment's proxy yields to NO_PROXY.
    let trimmed = |u: &str| u.trim_end_matches('/').to_owned();
    let from_env: Vec<String> = ["HTTPS_PROXY", "https_proxy"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|v| trimmed(&v))
        .collect();
    let explicit = config
        .proxy_url
        .as_ref()
        .map(|u| trimmed(&u.to_string()))
        .filter(|u| !from_env.contains(u));
    let matcher = match explicit {
        Some(explicit) => Matcher::builder().all(explicit).build(),
        None => Matcher::from_env(),
    };
    let Some(proxy) = matcher.intercept(&config.cluster_url) else {
        return Ok(None);
    };
    if proxy.uri().scheme_str() != Some("http") {
        return Err(K8sError::Proxy {
            url: proxy.uri().to_string(),
        });
    }
    Ok(Some(proxy))
}

/// kube-rs's client stack (base URI, auth, extra headers, the configuration's connect, read
/// and write timeouts) over a connector with TCP_NODELAY, tunnelled through `proxy` if any.
pub fn client(config: kube::Config, proxy: Option<Intercept>) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE.0));
    http.set_keepalive_interval(Some(KEEPALIVE.1));
    http.set_keepalive_retries(Some(KEEPALIVE.2));
    match proxy {
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            stack(config, tunnel)
        }
        None => stack(config, http),
    }
}

fn stack<C>(config: kube::Config, connector: C) -> Result<kube::Client, kube::Error>
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin
        + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let https = config.rustls_https_connector_with_connector(connector)?;
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
        let client = client(config, None).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), client.apiserver_version())
            .await
            .expect("the client's own timeout ends the request, not this one");
        assert!(answer.is_err());
    }

    #[test]
    fn kubeconfig_lists_merge_as_kubectls_and_skip_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, context: &str, server: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!(
                    r#"{{"apiVersion": "v1", "kind": "Config",
                  "clusters": [{{"name": "{context}", "cluster": {{"server": "{server}"}}}}],
                  "users": [{{"name": "{context}", "user": {{"token": "t"}}}}],
                  "contexts": [{{"name": "{context}", "context": {{"cluster": "{context}", "user": "{context}"}}}}],
                  "current-context": "{context}"}}"#
                ),
            )
            .unwrap();
            path
        };
        let a = write("a.kc", "a", "https://10.0.0.1:6443");
        let b = write("b.kc", "b", "https://10.0.0.2:6443");
        let missing = dir.path().join("missing.kc");
        let join = |paths: &[&std::path::Path]| std::env::join_paths(paths).unwrap();

        let Some(Listed::Merged(merged)) = listed(&join(&[&missing, &a, &b])).unwrap() else {
            panic!("merged");
        };
        assert_eq!(
            merged.current_context.as_deref(),
            Some("a"),
            "the first file wins"
        );
        let contexts: Vec<&str> = merged.contexts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(contexts, ["a", "b"]);

        assert!(matches!(
            listed(&join(&[&missing])).unwrap(),
            Some(Listed::None(paths)) if paths == [missing.clone()]
        ));
        assert!(listed(std::ffi::OsStr::new("")).unwrap().is_none());

        // A file that exists but is no kubeconfig is an error that names it.
        let bad = dir.path().join("bad.kc");
        std::fs::write(&bad, "clusters: [oops").unwrap();
        let e = listed(&join(&[&a, &bad])).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
    }

    #[test]
    fn request_timeouts_read_as_kubectls() {
        assert_eq!(parse_timeout("10s"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(parse_timeout("2m"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(parse_timeout("7"), Ok(Some(Duration::from_secs(7))));
        assert_eq!(parse_timeout("0"), Ok(None));
        for bad in ["", "s", "1d", "-1", "1.5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_kubeconfigs_proxy_is_used_and_only_http_proxies_are() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = |proxy: &str| {
            let path = dir.path().join(format!("kc-{}", proxy.len()));
            std::fs::write(
                &path,
                format!(
                    r#"{{"apiVersion": "v1", "kind": "Config",
                  "clusters": [{{"name": "c", "cluster": {{"server": "https://10.0.0.1:6443",
                                "proxy-url": "{proxy}"}}}}],
                  "users": [{{"name": "u", "user": {{"token": "t"}}}}],
                  "contexts": [{{"name": "x", "context": {{"cluster": "c", "user": "u"}}}}],
                  "current-context": "x"}}"#
                ),
            )
            .unwrap();
            ClusterOptions {
                kubeconfig: Some(path),
                ..ClusterOptions::default()
            }
        };
        let kube = connect(&kubeconfig("http://u:p@proxy.example:3128"))
            .await
            .expect("an http proxy");
        assert_eq!(kube.url, "https://10.0.0.1:6443");
        let options = kubeconfig("socks5://proxy.example:1080");
        match connect(&options).await {
            Err(e @ K8sError::Proxy { .. }) => {
                assert!(e.to_string().contains("socks5://proxy.example:1080"), "{e}");
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("the socks proxy was taken"),
        }
    }
}
