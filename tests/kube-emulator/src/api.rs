//! The HTTP side: the [`Emulator`] handle, serving (TLS, client certificates, an optional path
//! prefix), routes, authentication and authorization, faults on demand, and every answer in
//! the shape a real API server gives (objects, lists, watch events, `metav1.Status` errors).

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tower::ServiceExt as _;
use tracing::{debug, warn};

pub use crate::auth::Access;
use crate::auth::{Caller, Logins, PeerCertificate, TOKEN_USER};
use crate::credential::{CredentialError, TokenIssuer};
use crate::kubeconfig::{KubeCluster, KubeContext, KubeUser, Kubeconfig};
use crate::store::{PodDesc, PodEvent, SecretDesc, Store, WorkloadDesc};
use crate::tls::{ClientCertificate, Pki, kubeconfig};

/// How the emulator answers SelfSubjectAccessReviews.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessReviews {
    /// Answered from the caller's [`Access`].
    #[default]
    Served,
    /// Not served: 404, and discovery lists no `authorization.k8s.io` (as behind some proxies).
    NotServed,
    /// Served, but creating a review is forbidden (403).
    Forbidden,
}

/// How to start an emulator beyond its address.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    path_prefix: String,
}

impl StartOptions {
    /// Serves every route only under `prefix` (e.g. `/k8s/clusters/c-abc`, as Rancher does);
    /// everything else is 404. [`Emulator::server_url`] and kubeconfigs include it.
    pub fn path_prefix(mut self, prefix: &str) -> StartOptions {
        let trimmed = prefix.trim_end_matches('/');
        self.path_prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        self
    }
}

/// One request as the API server received it, in arrival order: what tests count (how many
/// port-forwards a connection cost, how many requests a start spent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The HTTP method.
    pub method: String,
    /// The path, under the path prefix if there is one.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
}

impl Logged {
    /// Whether this asked for a port-forward (`pods/NAME/portforward`).
    pub fn is_port_forward(&self) -> bool {
        self.path.ends_with("/portforward")
    }

    /// Whether this started a watch (`?watch=true`, or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    }
}

/// The TLS connections the API server accepted: how many, and how many of them resumed an
/// earlier session (an abbreviated handshake).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshakes {
    /// Every completed TLS handshake.
    pub total: usize,
    /// Those that resumed a session.
    pub resumed: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: Option<(Instant, u16)>,
    stall: Option<Instant>,
    pub(crate) expire_until: Option<Instant>,
}

pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    pub(crate) events: broadcast::Sender<PodEvent>,
    logins: Mutex<Logins>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) forwards: watch::Sender<u64>,
    pub(crate) live_forwards: AtomicUsize,
    requests: Mutex<Vec<Logged>>,
    handshakes: Mutex<Handshakes>,
    pub(crate) expiry: watch::Sender<u64>,
    pub(crate) access_reviews: Mutex<AccessReviews>,
    pki: Pki,
    pub(crate) addr: SocketAddr,
    path_prefix: String,
    pub(crate) bookmark_every: Duration,
}

/// A running emulator; clones share it. Lives as long as the tokio runtime it was started on.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emulator {
    /// Starts serving HTTPS on `addr`, bound inside network namespace `netns` when given.
    /// Must be called within a tokio runtime.
    pub async fn start(addr: SocketAddr, netns: Option<&str>) -> anyhow::Result<Emulator> {
        Emulator::start_with(addr, netns, StartOptions::default()).await
    }

    /// [`Emulator::start`] with options.
    pub async fn start_with(
        addr: SocketAddr,
        netns: Option<&str>,
        options: StartOptions,
    ) -> anyhow::Result<Emulator> {
        let listener = crate::netns::bind(netns, addr)?;
        let addr = listener.local_addr()?;
        let emulator = Emulator {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                events: broadcast::channel(4096).0,
                logins: Mutex::new(Logins::default()),
                faults: Mutex::new(Faults::default()),
                forwards: watch::channel(0).0,
                live_forwards: AtomicUsize::new(0),
                requests: Mutex::new(Vec::new()),
                handshakes: Mutex::new(Handshakes::default()),
                expiry: watch::channel(0).0,
                access_reviews: Mutex::new(AccessReviews::default()),
                pki: Pki::generate(addr)?,
                addr,
                path_prefix: options.path_prefix,
                bookmark_every: Duration::from_secs(2),
            }),
        };
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(serve(listener, emulator.clone()));
        Ok(emulator)
    }

    /// `https://IP:PORT`, with the path prefix when there is one.
    pub fn server_url(&self) -> String {
        format!("https://{}{}", self.inner.addr, self.inner.path_prefix)
    }

    /// The address it listens on (`KUBERNETES_SERVICE_HOST`/`_PORT` for in-cluster clients).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.inner.pki.ca_pem
    }

    /// A kubeconfig for `token` with `namespace` as the context's namespace.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> String {
        kubeconfig(
            &self.server_url(),
            &self.inner.pki.ca_pem,
            token,
            namespace,
            "erlbridge-test",
        )
    }

    /// This cluster as a kubeconfig entry named `name`, to combine with others in a
    /// [`Kubeconfig`].
    pub fn kube_cluster(&self, name: &str) -> KubeCluster {
        KubeCluster::new(name, &self.server_url(), &self.inner.pki.ca_pem)
    }

    /// A one-context kubeconfig for `user`.
    pub fn kubeconfig_for(&self, user: KubeUser, namespace: &str) -> String {
        Kubeconfig::default()
            .context(KubeContext::new(
                "erlbridge-test",
                self.kube_cluster("erlbridge-test"),
                user,
                namespace,
            ))
            .to_yaml()
    }

    /// Accepts `token` with `access`.
    pub fn add_token(&self, token: &str, access: Access) {
        lock(&self.inner.logins).add_token(token, access);
    }

    /// Stops accepting `token` (it gets 401 from now on).
    pub fn revoke_token(&self, token: &str) {
        lock(&self.inner.logins).revoke_token(token);
    }

    /// Accepts tokens the exec credential plugin mints from `issuer_file` (written here, with a
    /// new secret) for `user`, each valid for `validity` and then answered 401, with `access`.
    /// Replaces any earlier issuer. The plugin runs as the client's user, who must be able to
    /// read the file (and write the plugin's log). kube-rs runs the plugin again whenever its
    /// token expires within 60 s, so with a validity of seconds it runs before every request.
    pub fn enable_exec_logins(
        &self,
        issuer_file: &FsPath,
        user: &str,
        validity: Duration,
        access: Access,
    ) -> Result<(), CredentialError> {
        let issuer = TokenIssuer::generate(user, validity)?;
        issuer.write(issuer_file)?;
        lock(&self.inner.logins).enable_exec(issuer, access);
        Ok(())
    }

    /// A kubeconfig whose user runs the exec credential plugin `plugin` on `issuer_file`,
    /// logging each call to `log` when given.
    pub fn exec_kubeconfig(
        &self,
        plugin: &FsPath,
        issuer_file: &FsPath,
        log: Option<&FsPath>,
        namespace: &str,
    ) -> String {
        let exec = crate::credential::exec_login(plugin, issuer_file, log);
        self.kubeconfig_for(KubeUser::exec("exec-user", exec), namespace)
    }

    /// A client certificate for `user` (its common name), signed by the cluster's CA and
    /// accepted with `access` (the user's access, also for certificates issued earlier).
    pub fn issue_client_certificate(
        &self,
        user: &str,
        access: Access,
    ) -> anyhow::Result<ClientCertificate> {
        let cert = self.inner.pki.issue_client_certificate(user)?;
        lock(&self.inner.logins).add_certificate(cert.der.clone(), user, access);
        Ok(cert)
    }

    /// A kubeconfig logging in as `user` with a new client certificate
    /// (`client-certificate-data`/`client-key-data`) accepted with `access`.
    pub fn client_certificate_kubeconfig(
        &self,
        user: &str,
        access: Access,
        namespace: &str,
    ) -> anyhow::Result<String> {
        let cert = self.issue_client_certificate(user, access)?;
        Ok(self.kubeconfig_for(KubeUser::client_certificate(user, &cert), namespace))
    }

    /// Writes a service account's files into `dir` as a pod sees them at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`: `token`, `ca.crt` and `namespace`. Call
    /// again with a new token to rotate it (each file is replaced whole, never seen half
    /// written); the token must be added with [`Emulator::add_token`].
    pub fn write_service_account(
        &self,
        dir: &FsPath,
        token: &str,
        namespace: &str,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, content) in [
            ("ca.crt", self.inner.pki.ca_pem.as_str()),
            ("namespace", namespace),
            ("token", token),
        ] {
            let staged = dir.join(format!(".{name}.new"));
            std::fs::write(&staged, content)?;
            std::fs::rename(&staged, dir.join(name))?;
        }
        Ok(())
    }

    /// Creates or replaces a pod (watchers see ADDED or MODIFIED).
    pub fn apply_pod(&self, desc: PodDesc) {
        let event = lock(&self.inner.store).apply_pod(desc);
        let _ = self.inner.events.send(event);
    }

    /// Deletes a pod (watchers see DELETED); false when there was none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let Some(event) = lock(&self.inner.store).delete_pod(namespace, name) else {
            return false;
        };
        let _ = self.inner.events.send(event);
        true
    }

    /// Deletes a pod with no watch event ever sent for it, as if the deletion fell into a
    /// compacted history: live watches never hear of it, a watch resumed from an older version
    /// gets 410 Gone, lists no longer show it. False when there was none.
    pub fn delete_pod_silently(&self, namespace: &str, name: &str) -> bool {
        lock(&self.inner.store).delete_pod_silently(namespace, name)
    }

    /// The current description of a pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodDesc> {
        lock(&self.inner.store).pod_desc(namespace, name).cloned()
    }

    /// Creates or replaces a StatefulSet or Deployment.
    pub fn apply_workload(&self, desc: WorkloadDesc) {
        lock(&self.inner.store).apply_workload(desc);
    }

    /// Creates or replaces a secret.
    pub fn apply_secret(&self, desc: SecretDesc) {
        lock(&self.inner.store).apply_secret(desc);
    }

    /// Answers every request with `code` (a 5xx) for `duration`.
    pub fn fail_requests(&self, code: u16, duration: Duration) {
        lock(&self.inner.faults).fail = Some((Instant::now() + duration, code));
    }

    /// Holds every request for `duration` before answering it.
    pub fn stall_requests(&self, duration: Duration) {
        lock(&self.inner.faults).stall = Some(Instant::now() + duration);
    }

    /// Ends every live watch with an `ERROR` event carrying `410 Gone` (reason `Expired`), and
    /// for `duration` gives the same to every new watch that starts from a resource version, as
    /// an API server whose history was compacted; lists keep working.
    pub fn expire_watches(&self, duration: Duration) {
        lock(&self.inner.faults).expire_until = Some(Instant::now() + duration);
        self.inner.expiry.send_modify(|generation| *generation += 1);
    }

    /// Sets how access reviews are answered.
    pub fn set_access_reviews(&self, reviews: AccessReviews) {
        *lock(&self.inner.access_reviews) = reviews;
    }

    /// Cuts every live port-forward connection, as an API server restart or idle timeout does.
    pub fn drop_forwards(&self) {
        self.inner
            .forwards
            .send_modify(|generation| *generation += 1);
    }

    /// How many port-forward connections are open.
    pub fn live_forwards(&self) -> usize {
        self.inner.live_forwards.load(Ordering::Relaxed)
    }

    /// Every request received so far, in order (failed and refused ones included).
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.inner.requests).clone()
    }

    /// How many port-forwards were asked for so far.
    pub fn port_forwards(&self) -> usize {
        lock(&self.inner.requests)
            .iter()
            .filter(|r| r.is_port_forward())
            .count()
    }

    /// The TLS handshakes completed so far.
    pub fn handshakes(&self) -> Handshakes {
        *lock(&self.inner.handshakes)
    }
}

async fn serve(listener: tokio::net::TcpListener, emulator: Emulator) {
    let router = router(emulator.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(emulator.inner.pki.server.clone());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router, emulator) = (acceptor.clone(), router.clone(), emulator.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            {
                let mut handshakes = lock(&emulator.inner.handshakes);
                handshakes.total += 1;
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    handshakes.resumed += 1;
                }
            }
            // The acceptor verified it against the CA already; the gate looks up its user.
            let cert = PeerCertificate(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.to_vec()),
            );
            let service = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(cert.clone());
                let (router, emulator) = (router.clone(), emulator.clone());
                lock(&emulator.inner.requests).push(Logged {
                    method: req.method().to_string(),
                    path: req.uri().path().to_owned(),
                    query: req.uri().query().map(str::to_owned),
                });
                async move {
                    match strip_prefix(&emulator.inner.path_prefix, req.uri()) {
                        Some(uri) => {
                            *req.uri_mut() = uri;
                            router.oneshot(req.map(axum::body::Body::new)).await
                        }
                        None => Ok(not_found_route()),
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(service),
                )
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// `uri` without `prefix`, or `None` when it is not under it.
fn strip_prefix(prefix: &str, uri: &Uri) -> Option<Uri> {
    if prefix.is_empty() {
        return Some(uri.clone());
    }
    let path = uri.path().strip_prefix(prefix)?;
    if !(path.is_empty() || path.starts_with('/')) {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    let rebuilt = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    rebuilt.parse().ok()
}

fn router(emulator: Emulator) -> Router {
    use crate::{discovery, pods, workloads};
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/api/v1", get(discovery::core_v1))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/apps/v1", get(discovery::apps_v1))
        .route(
            "/apis/authorization.k8s.io/v1",
            get(discovery::authorization_v1),
        )
        .route("/api/v1/pods", get(pods::list_all_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(pods::list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pods::get_pod))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            get(crate::portforward::handler).post(crate::portforward::handler),
        )
        .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret))
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets",
            get(workloads::list_statefulsets),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
            get(workloads::get_statefulset),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments",
            get(workloads::list_deployments),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(workloads::get_deployment),
        )
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(access_review),
        )
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(emulator.clone(), gate))
        .with_state(emulator)
}

/// A `metav1.Status` failure.
pub fn status(
    code: StatusCode,
    reason: &str,
    message: impl Into<String>,
    details: Value,
) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    });
    if !details.is_null() {
        body["details"] = details;
    }
    (code, Json(body)).into_response()
}

/// 404 for `resource` (plural, with `.group` for non-core) named `name`.
pub fn not_found(resource: &str, name: &str) -> Response {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{resource} \"{name}\" not found"),
        json!({"name": name, "group": group, "kind": kind}),
    )
}

/// 404 for a path the server does not serve.
pub fn not_found_route() -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        Value::Null,
    )
}

/// 403 as the RBAC authorizer words it, for the test's token user.
pub fn forbidden(
    verb: &str,
    resource: &str,
    group: &str,
    namespace: &str,
    name: Option<&str>,
) -> Response {
    forbidden_for(TOKEN_USER, verb, resource, group, namespace, name)
}

/// 403 as the RBAC authorizer words it, for `user`; an empty `namespace` is the cluster scope.
pub fn forbidden_for(
    user: &str,
    verb: &str,
    resource: &str,
    group: &str,
    namespace: &str,
    name: Option<&str>,
) -> Response {
    let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let qualified = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    let subject = match name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    let what = if sub.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}/{sub}")
    };
    let scope = if namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{namespace}\"")
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{what}\" in API group \"{group}\" {scope}"
        ),
        json!({"name": name.unwrap_or_default(), "group": group, "kind": plural}),
    )
}

/// The Forbidden answer, unless the caller may do `verb` on `resource`.
pub(crate) fn forbid_unless(
    caller: &Caller,
    verb: &str,
    resource: &str,
    group: &str,
    ns: &str,
    name: Option<&str>,
) -> Option<Response> {
    (!caller.access.allows(verb, resource))
        .then(|| forbidden_for(&caller.user, verb, resource, group, ns, name))
}

/// Faults first, then authentication: a client certificate or bearer token, whose caller goes
/// into the request's extensions for the handlers' authorization.
async fn gate(State(emu): State<Emulator>, mut req: Request, next: Next) -> Response {
    let stall = lock(&emu.inner.faults).stall;
    if let Some(until) = stall {
        tokio::time::sleep_until(until.into()).await;
    }
    let fail = lock(&emu.inner.faults).fail;
    if let Some((until, code)) = fail
        && Instant::now() < until
    {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let reason = match code.as_u16() {
            500 => "InternalError",
            504 => "Timeout",
            _ => "ServiceUnavailable",
        };
        return status(
            code,
            reason,
            "the server is currently unable to handle the request",
            Value::Null,
        );
    }
    if req.uri().path() == "/version" {
        return next.run(req).await;
    }
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .cloned()
        .unwrap_or_default();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = lock(&emu.inner.logins).authenticate(&cert, bearer);
    let Some(caller) = caller else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            Value::Null,
        );
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn fallback(req: Request) -> Response {
    warn!(path = %req.uri().path(), "no such route");
    not_found_route()
}

async fn get_secret(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = forbid_unless(&caller, "get", "secrets", "", &ns, Some(&name)) {
        return r;
    }
    match lock(&emu.inner.store).secret(&ns, &name) {
        Some(secret) => Json(secret).into_response(),
        None => not_found("secrets", &name),
    }
}

/// SelfSubjectAccessReview: may the caller do this?
async fn access_review(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Json(mut review): Json<Value>,
) -> Response {
    match *lock(&emu.inner.access_reviews) {
        AccessReviews::Served => {}
        AccessReviews::NotServed => return not_found_route(),
        AccessReviews::Forbidden => {
            return forbidden_for(
                &caller.user,
                "create",
                "selfsubjectaccessreviews",
                "authorization.k8s.io",
                "",
                None,
            );
        }
    }
    let attrs = &review["spec"]["resourceAttributes"];
    let verb = attrs["verb"].as_str().unwrap_or_default().to_owned();
    let mut resource = attrs["resource"].as_str().unwrap_or_default().to_owned();
    if let Some(sub) = attrs["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let allowed = caller.access.allows(&verb, &resource);
    review["status"] = json!({"allowed": allowed});
    if !allowed {
        review["status"]["reason"] = json!(format!("no RBAC rule allows {verb} on {resource}"));
    }
    (StatusCode::CREATED, Json(review)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_prefix_are_served() {
        let uri = |s: &str| s.parse::<Uri>().expect("a uri");
        let prefix = "/k8s/clusters/c-abc";
        assert_eq!(
            strip_prefix(prefix, &uri("/k8s/clusters/c-abc/api/v1/pods?watch=1")),
            Some(uri("/api/v1/pods?watch=1"))
        );
        assert_eq!(
            strip_prefix(prefix, &uri("/k8s/clusters/c-abc")),
            Some(uri("/"))
        );
        assert_eq!(strip_prefix(prefix, &uri("/k8s/clusters/c-abcd/api")), None);
        assert_eq!(strip_prefix(prefix, &uri("/api/v1/pods")), None);
        assert_eq!(strip_prefix("", &uri("/api")), Some(uri("/api")));
        assert_eq!(
            StartOptions::default().path_prefix("k8s/x/").path_prefix,
            "/k8s/x"
        );
    }
}
