//! StatefulSets and Deployments: get and list, as `apps/v1` JSON.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use crate::api::{Emulator, forbid_unless, lock, not_found};
use crate::auth::Caller;
use crate::store::{WorkloadDesc, WorkloadKind, deployment_json, statefulset_json};

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
    caller: &Caller,
    kind: WorkloadKind,
    ns: &str,
    name: &str,
) -> Response {
    if let Some(r) = forbid_unless(caller, "get", plural(kind), "apps", ns, Some(name)) {
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

fn list_workloads(emu: &Emulator, caller: &Caller, kind: WorkloadKind, ns: &str) -> Response {
    if let Some(r) = forbid_unless(caller, "list", plural(kind), "apps", ns, None) {
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

/// The `get_statefulset` route.
pub async fn get_statefulset(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    get_workload(&emu, &caller, WorkloadKind::StatefulSet, &ns, &name)
}

/// The `get_deployment` route.
pub async fn get_deployment(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    get_workload(&emu, &caller, WorkloadKind::Deployment, &ns, &name)
}

/// The `list_statefulsets` route.
pub async fn list_statefulsets(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
) -> Response {
    list_workloads(&emu, &caller, WorkloadKind::StatefulSet, &ns)
}

/// The `list_deployments` route.
pub async fn list_deployments(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
) -> Response {
    list_workloads(&emu, &caller, WorkloadKind::Deployment, &ns)
}
