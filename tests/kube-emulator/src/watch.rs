//! Pod watches: a stream of JSON lines (`{"type": ..., "object": ...}`) from the store's
//! history, then live changes, with bookmarks when asked. Watches also end as real ones do when
//! the history they start from is gone: with an `ERROR` event carrying a `410 Gone` Status
//! (reason `Expired`, "too old resource version"), after which clients list again.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::json;

use crate::api::{Emulator, lock};
use crate::store::PodDesc;

/// Which pods a watch reports.
pub type PodFilter = Box<dyn Fn(&PodDesc) -> bool + Send + Sync>;

/// What a watch was asked for.
pub struct WatchRequest {
    /// Which pods.
    pub filter: PodFilter,
    /// The resource version to start after (`None` or 0: the current state as ADDED events).
    pub resource_version: Option<u64>,
    /// When to end the stream.
    pub timeout: Option<Duration>,
    /// Whether to send bookmarks.
    pub bookmarks: bool,
}

fn event_line(kind: &str, object: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// The `ERROR` event of a watch whose starting version is no longer in the history.
fn too_old(rv: u64, current: u64) -> Bytes {
    event_line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {rv} ({current})"),
            "reason": "Expired", "code": 410,
        }),
    )
}

fn stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether watches from a resource version are being refused right now.
pub(crate) fn refusing(until: Option<Instant>) -> bool {
    until.is_some_and(|until| Instant::now() < until)
}

/// Serves a pod watch.
pub fn watch_pods(emu: Emulator, request: WatchRequest) -> Response {
    let WatchRequest {
        filter,
        resource_version: rv,
        timeout,
        bookmarks,
    } = request;
    // Subscribe before reading the store, so no change falls between the two.
    let mut live = emu.inner.events.subscribe();
    let mut expiry = emu.inner.expiry.subscribe();
    let refused = refusing(lock(&emu.inner.faults).expire_until);
    let (initial, mut last, gone) = {
        let store = lock(&emu.inner.store);
        let current = store.resource_version();
        let gone = rv.is_some_and(|rv| refused || rv < store.compacted());
        let initial: Vec<_> = match rv {
            None => store
                .pods(None)
                .into_iter()
                .filter(|(d, _)| filter(d))
                .map(|(_, pod)| event_line("ADDED", &pod))
                .collect(),
            Some(rv) if gone => vec![too_old(rv, current)],
            Some(rv) => store
                .events_since(rv)
                .into_iter()
                .filter(|e| filter(&e.desc))
                .map(|e| event_line(e.kind, &e.pod))
                .collect(),
        };
        (initial, current, gone)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let every = emu.inner.bookmark_every;
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if gone {
            return;
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
                // Expired on demand: say so, then end, as an API server whose history moved on.
                _ = expiry.changed() => {
                    let current = lock(&emu.inner.store).resource_version();
                    let _ = tx.send(too_old(last, current)).await;
                    return;
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    stream(rx)
}
