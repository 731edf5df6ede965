//! Discovery: `/version`, `/api`, `/api/v1`, `/apis` and each group's resource list, as kubectl
//! and kube-rs read them. `authorization.k8s.io` is listed only while the emulator serves
//! access reviews ([`crate::AccessReviews`]).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{AccessReviews, Emulator, lock, not_found_route};

/// `GET /version`.
pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-erlbridge-emulator",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

/// `GET /api`.
pub async fn api_versions(State(emu): State<Emulator>) -> Json<Value> {
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

/// `GET /api/v1`.
pub async fn core_v1() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            resource("pods", "Pod", true, &["get", "list", "watch"], &["po"]),
            resource("pods/portforward", "PodPortForwardOptions", true, &["create", "get"], &[]),
            resource("secrets", "Secret", true, &["get"], &[]),
        ],
    }))
}

fn reviews_served(emu: &Emulator) -> bool {
    *lock(&emu.inner.access_reviews) != AccessReviews::NotServed
}

/// `GET /apis`.
pub async fn api_groups(State(emu): State<Emulator>) -> Json<Value> {
    let apps = json!({"groupVersion": "apps/v1", "version": "v1"});
    let mut groups = vec![json!({"name": "apps", "versions": [apps], "preferredVersion": apps})];
    if reviews_served(&emu) {
        let authz = json!({"groupVersion": "authorization.k8s.io/v1", "version": "v1"});
        groups.push(
            json!({"name": "authorization.k8s.io", "versions": [authz], "preferredVersion": authz}),
        );
    }
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

/// `GET /apis/apps/v1`.
pub async fn apps_v1() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
        "resources": [
            resource("statefulsets", "StatefulSet", true, &["get", "list"], &["sts"]),
            resource("deployments", "Deployment", true, &["get", "list"], &["deploy"]),
        ],
    }))
}

/// `GET /apis/authorization.k8s.io/v1`.
pub async fn authorization_v1(State(emu): State<Emulator>) -> Response {
    if !reviews_served(&emu) {
        return not_found_route();
    }
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authorization.k8s.io/v1",
        "resources": [resource("selfsubjectaccessreviews", "SelfSubjectAccessReview", false, &["create"], &[])],
    }))
    .into_response()
}
