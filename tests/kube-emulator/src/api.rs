//! The HTTP side: routes, authentication and authorization by bearer token, faults on demand,
//! and every answer in the shape a real API server gives (objects, lists, watch events,
//! `metav1.Status` errors).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use crate::selector::Selector;
use crate::store::{
    PodDesc, PodEvent, SecretDesc, Store, WorkloadDesc, WorkloadKind, deployment_json,
    statefulset_json,
};
use crate::tls::{Pki, kubeconfig};

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything.
    Full,
    /// Nothing but discovery (a valid token without RBAC rights).
    Nothing,
    /// Only these (verb, resource) pairs, e.g. ("list", "pods"), ("create", "pods/portforward").
    Only(Vec<(String, String)>),
}

impl Access {
    fn allows(&self, verb: &str, resource: &str) -> bool {
        match self {
            Access::Full => true,
            Access::Nothing => false,
            Access::Only(rules) => rules.iter().any(|(v, r)| v == verb && r == resource),
        }
    }
}

/// The user every token stands for, as Forbidden messages name it.
const USER: &str = "system:serviceaccount:default:tester";

#[derive(Debug, Default)]
struct Faults {
    fail: Option<(Instant, u16)>,
    stall: Option<Instant>,
}

pub(crate) struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<PodEvent>,
    tokens: Mutex<HashMap<String, Access>>,
    faults: Mutex<Faults>,
    pub(crate) forwards: watch::Sender<u64>,
    pub(crate) live_forwards: AtomicUsize,
    pki: Pki,
    addr: SocketAddr,
    bookmark_every: Duration,
}

/// A running emulator; clones share it. Lives as long as the tokio runtime it was started on.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emulator {
    /// Starts serving HTTPS on `addr`, bound inside network namespace `netns` when given.
    /// Must be called within a tokio runtime.
    pub async fn start(addr: SocketAddr, netns: Option<&str>) -> anyhow::Result<Emulator> {
        let listener = crate::netns::bind(netns, addr)?;
        let addr = listener.local_addr()?;
        let emulator = Emulator {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                events: broadcast::channel(4096).0,
                tokens: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults::default()),
                forwards: watch::channel(0).0,
                live_forwards: AtomicUsize::new(0),
                pki: Pki::generate(addr)?,
                addr,
                bookmark_every: Duration::from_secs(2),
            }),
        };
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(serve(listener, emulator.clone()));
        Ok(emulator)
    }

    /// `https://IP:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://{}", self.inner.addr)
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

    /// Accepts `token` with `access`.
    pub fn add_token(&self, token: &str, access: Access) {
        lock(&self.inner.tokens).insert(token.to_owned(), access);
    }

    /// Stops accepting `token` (it gets 401 from now on).
    pub fn revoke_token(&self, token: &str) {
        lock(&self.inner.tokens).remove(token);
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
}

async fn serve(listener: tokio::net::TcpListener, emulator: Emulator) {
    let router = router(emulator.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(emulator.inner.pki.server.clone());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(core_v1))
        .route("/apis", get(api_groups))
        .route("/apis/apps/v1", get(apps_v1))
        .route("/apis/authorization.k8s.io/v1", get(authorization_v1))
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/portforward",
            get(crate::portforward::handler).post(crate::portforward::handler),
        )
        .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret))
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets",
            get(list_statefulsets),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
            get(get_statefulset),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments",
            get(list_deployments),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(get_deployment),
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

/// 403 as the RBAC authorizer words it.
pub fn forbidden(
    verb: &str,
    resource: &str,
    group: &str,
    namespace: &str,
    name: Option<&str>,
) -> Response {
    let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let subject = match name {
        Some(n) => format!("{plural} \"{n}\""),
        None => plural.to_owned(),
    };
    let what = if sub.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}/{sub}")
    };
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{what}\" in API group \"{group}\" in the namespace \"{namespace}\""
        ),
        json!({"name": name.unwrap_or_default(), "group": group, "kind": plural}),
    )
}

fn bad_request(message: impl Into<String>) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, Value::Null)
}

/// Faults first, then authentication: a valid bearer token, whose access goes into the
/// request's extensions for the handlers' authorization.
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
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let access = token.and_then(|t| lock(&emu.inner.tokens).get(&t).cloned());
    let Some(access) = access else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            Value::Null,
        );
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

async fn fallback(req: Request) -> Response {
    warn!(path = %req.uri().path(), "no such route");
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        Value::Null,
    )
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-erlbridge-emulator",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

async fn api_versions(State(emu): State<Emulator>) -> Json<Value> {
    Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": emu.inner.addr.to_string()}],
    }))
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    let mut r = json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs});
    if !short.is_empty() {
        r["shortNames"] = json!(short);
    }
    r
}

async fn core_v1() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            resource("pods", "Pod", true, &["get", "list", "watch"], &["po"]),
            resource("pods/portforward", "PodPortForwardOptions", true, &["create", "get"], &[]),
            resource("secrets", "Secret", true, &["get"], &[]),
        ],
    }))
}

async fn api_groups() -> Json<Value> {
    let apps = json!({"groupVersion": "apps/v1", "version": "v1"});
    let authz = json!({"groupVersion": "authorization.k8s.io/v1", "version": "v1"});
    Json(json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [
            {"name": "apps", "versions": [apps], "preferredVersion": apps},
            {"name": "authorization.k8s.io", "versions": [authz], "preferredVersion": authz},
        ],
    }))
}

async fn apps_v1() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
        "resources": [
            resource("statefulsets", "StatefulSet", true, &["get", "list"], &["sts"]),
            resource("deployments", "Deployment", true, &["get", "list"], &["deploy"]),
        ],
    }))
}

async fn authorization_v1() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authorization.k8s.io/v1",
        "resources": [resource("selfsubjectaccessreviews", "SelfSubjectAccessReview", false, &["create"], &[])],
    }))
}

/// Query parameters of list and watch calls.
type Params = Query<HashMap<String, String>>;

/// The Forbidden answer, unless `access` allows `verb` on `resource`.
fn forbid_unless(
    access: &Access,
    verb: &str,
    resource: &str,
    group: &str,
    ns: &str,
    name: Option<&str>,
) -> Option<Response> {
    (!access.allows(verb, resource)).then(|| forbidden(verb, resource, group, ns, name))
}

async fn list_all_pods(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    params: Params,
) -> Response {
    pods(emu, access, None, params.0).await
}

async fn list_pods(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path(ns): Path<String>,
    params: Params,
) -> Response {
    pods(emu, access, Some(ns), params.0).await
}

/// A field selector on `metadata.name` / `metadata.namespace`, the ones clients use on pods.
fn field_filter(text: &str) -> Result<Vec<(String, String, bool)>, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (key, value, equal) = match part.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => {
                    let (k, v) = part
                        .split_once("==")
                        .or_else(|| part.split_once('='))
                        .ok_or_else(|| format!("invalid field selector: {part:?}"))?;
                    (k, v, true)
                }
            };
            match key {
                "metadata.name" | "metadata.namespace" => Ok((key.to_owned(), value.to_owned(), equal)),
                _ => Err(format!("\"{key}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")),
            }
        })
        .collect()
}

fn fields_match(fields: &[(String, String, bool)], desc: &PodDesc) -> bool {
    fields.iter().all(|(key, value, equal)| {
        let actual = if key == "metadata.name" {
            &desc.name
        } else {
            &desc.namespace
        };
        (actual == value) == *equal
    })
}

async fn pods(
    emu: Emulator,
    access: Access,
    ns: Option<String>,
    params: HashMap<String, String>,
) -> Response {
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watching { "watch" } else { "list" };
    if let Some(r) = forbid_unless(&access, verb, "pods", "", ns.as_deref().unwrap_or(""), None) {
        return r;
    }
    let selector = match Selector::parse(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("unable to parse requirement: {e}")),
    };
    let fields = match field_filter(params.get("fieldSelector").map_or("", String::as_str)) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let filter = move |desc: &PodDesc| {
        ns.as_deref().is_none_or(|n| desc.namespace == n)
            && selector.matches(&desc.labels)
            && fields_match(&fields, desc)
    };
    if watching {
        let rv = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let bookmarks = params
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        return watch_pods(emu, Box::new(filter), rv, timeout, bookmarks);
    }

    let (items, rv) = {
        let store = lock(&emu.inner.store);
        let items: Vec<_> = store
            .pods(None)
            .into_iter()
            .filter(|(d, _)| filter(d))
            .map(|(_, p)| p)
            .collect();
        (items, store.resource_version())
    };
    let offset: usize = match params.get("continue") {
        None => 0,
        Some(token) => match decode_continue(token) {
            Some(offset) => offset,
            None => {
                return status(
                    StatusCode::GONE,
                    "Expired",
                    "the provided continue parameter is too old or malformed",
                    Value::Null,
                );
            }
        },
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let page: Vec<_> = items.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(encode_continue(end));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page}))
        .into_response()
}

fn encode_continue(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"offset\":{offset}}}"))
}

fn decode_continue(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    usize::try_from(value.get("offset")?.as_u64()?).ok()
}

type PodFilter = Box<dyn Fn(&PodDesc) -> bool + Send + Sync>;

fn event_line(kind: &str, object: &impl serde::Serialize) -> axum::body::Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

fn watch_pods(
    emu: Emulator,
    filter: PodFilter,
    rv: Option<u64>,
    timeout: Option<Duration>,
    bookmarks: bool,
) -> Response {
    // Subscribe before reading the store, so no change falls between the two.
    let mut live = emu.inner.events.subscribe();
    let (initial, mut last) = {
        let store = lock(&emu.inner.store);
        let initial: Vec<_> = match rv {
            None => store
                .pods(None)
                .into_iter()
                .filter(|(d, _)| filter(d))
                .map(|(_, pod)| event_line("ADDED", &pod))
                .collect(),
            Some(rv) => store
                .events_since(rv)
                .into_iter()
                .filter(|e| filter(&e.desc))
                .map(|e| event_line(e.kind, &e.pod))
                .collect(),
        };
        (initial, store.resource_version())
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(64);
    let every = emu.inner.bookmark_every;
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            let line = tokio::select! {
                event = live.recv() => match event {
                    Ok(e) if e.rv > last => {
                        last = e.rv;
                        if !filter(&e.desc) {
                            continue;
                        }
                        event_line(e.kind, &e.pod)
                    }
                    Ok(_) => continue,
                    // Too slow a reader: end the watch; the client lists and watches again.
                    Err(_) => return,
                },
                _ = ticks.tick(), if bookmarks => {
                    let rv = lock(&emu.inner.store).resource_version();
                    event_line("BOOKMARK", &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}))
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn get_pod(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = forbid_unless(&access, "get", "pods", "", &ns, Some(&name)) {
        return r;
    }
    match lock(&emu.inner.store).pod(&ns, &name) {
        Some(pod) => Json(pod).into_response(),
        None => not_found("pods", &name),
    }
}

async fn get_secret(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = forbid_unless(&access, "get", "secrets", "", &ns, Some(&name)) {
        return r;
    }
    match lock(&emu.inner.store).secret(&ns, &name) {
        Some(secret) => Json(secret).into_response(),
        None => not_found("secrets", &name),
    }
}

fn workload_json(kind: WorkloadKind, w: &WorkloadDesc, rv: u64) -> Value {
    match kind {
        WorkloadKind::StatefulSet => serde_json::to_value(statefulset_json(w, rv)),
        WorkloadKind::Deployment => serde_json::to_value(deployment_json(w, rv)),
    }
    .unwrap_or_default()
}

fn plural(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::StatefulSet => "statefulsets",
        WorkloadKind::Deployment => "deployments",
    }
}

fn get_workload(
    emu: &Emulator,
    access: &Access,
    kind: WorkloadKind,
    ns: &str,
    name: &str,
) -> Response {
    if let Some(r) = forbid_unless(access, "get", plural(kind), "apps", ns, Some(name)) {
        return r;
    }
    let found = lock(&emu.inner.store)
        .workloads(kind, Some(ns))
        .into_iter()
        .find(|(w, _)| w.name == name);
    match found {
        Some((w, rv)) => Json(workload_json(kind, &w, rv)).into_response(),
        None => not_found(&format!("{}.apps", plural(kind)), name),
    }
}

fn list_workloads(emu: &Emulator, access: &Access, kind: WorkloadKind, ns: &str) -> Response {
    if let Some(r) = forbid_unless(access, "list", plural(kind), "apps", ns, None) {
        return r;
    }
    let store = lock(&emu.inner.store);
    let items: Vec<Value> = store
        .workloads(kind, Some(ns))
        .iter()
        .map(|(w, rv)| workload_json(kind, w, *rv))
        .collect();
    let list_kind = match kind {
        WorkloadKind::StatefulSet => "StatefulSetList",
        WorkloadKind::Deployment => "DeploymentList",
    };
    Json(json!({"kind": list_kind, "apiVersion": "apps/v1",
        "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items}))
    .into_response()
}

async fn get_statefulset(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    get_workload(&emu, &access, WorkloadKind::StatefulSet, &ns, &name)
}

async fn get_deployment(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    get_workload(&emu, &access, WorkloadKind::Deployment, &ns, &name)
}

async fn list_statefulsets(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path(ns): Path<String>,
) -> Response {
    list_workloads(&emu, &access, WorkloadKind::StatefulSet, &ns)
}

async fn list_deployments(
    State(emu): State<Emulator>,
    Extension(access): Extension<Access>,
    Path(ns): Path<String>,
) -> Response {
    list_workloads(&emu, &access, WorkloadKind::Deployment, &ns)
}

/// SelfSubjectAccessReview: may the caller do this?
async fn access_review(
    Extension(access): Extension<Access>,
    Json(mut review): Json<Value>,
) -> Response {
    let attrs = &review["spec"]["resourceAttributes"];
    let verb = attrs["verb"].as_str().unwrap_or_default().to_owned();
    let mut resource = attrs["resource"].as_str().unwrap_or_default().to_owned();
    if let Some(sub) = attrs["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let allowed = access.allows(&verb, &resource);
    review["status"] = json!({"allowed": allowed});
    if !allowed {
        review["status"]["reason"] = json!(format!("no RBAC rule allows {verb} on {resource}"));
    }
    (StatusCode::CREATED, Json(review)).into_response()
}
