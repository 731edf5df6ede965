//! Pods: get, list (label and field selectors, paging with continue tokens) and watch (see
//! [`crate::watch`]).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::api::{Emulator, forbid_unless, lock, not_found, status};
use crate::auth::Caller;
use crate::selector::Selector;
use crate::store::PodDesc;
use crate::watch::{WatchRequest, watch_pods};

/// Query parameters of list and watch calls.
type Params = Query<HashMap<String, String>>;

fn bad_request(message: impl Into<String>) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, Value::Null)
}

/// `GET /api/v1/pods`.
pub async fn list_all_pods(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Response {
    pods(emu, caller, None, params.0).await
}

/// `GET /api/v1/namespaces/NS/pods`.
pub async fn list_pods(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path(ns): Path<String>,
    params: Params,
) -> Response {
    pods(emu, caller, Some(ns), params.0).await
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
    caller: Caller,
    ns: Option<String>,
    params: HashMap<String, String>,
) -> Response {
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watching { "watch" } else { "list" };
    if let Some(r) = forbid_unless(&caller, verb, "pods", "", ns.as_deref().unwrap_or(""), None) {
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
        return watch_pods(
            emu,
            WatchRequest {
                filter: Box::new(filter),
                resource_version: rv,
                timeout,
                bookmarks,
            },
        );
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

/// `GET /api/v1/namespaces/NS/pods/NAME`.
pub async fn get_pod(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    if let Some(r) = forbid_unless(&caller, "get", "pods", "", &ns, Some(&name)) {
        return r;
    }
    match lock(&emu.inner.store).pod(&ns, &name) {
        Some(pod) => Json(pod).into_response(),
        None => not_found("pods", &name),
    }
}
