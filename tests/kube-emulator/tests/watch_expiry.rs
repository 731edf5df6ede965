//! Watches that expire as real API servers' do (410 Gone, reason Expired) and deletions lost
//! to a compacted history, as kube-runtime's watcher meets them: it lists again.

#[allow(dead_code)] // each test binary uses its own part of it
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{connect, emulator, list_version};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

/// The pods of the next complete initial listing (Init, InitApply..., InitDone) the watcher
/// reports, skipping errors and anything before it; panics on a Delete.
async fn next_listing(
    events: &mut (impl futures::Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin),
) -> BTreeSet<String> {
    let mut listing: Option<BTreeSet<String>> = None;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the watcher reports in time")
            .expect("the watcher goes on");
        match event {
            Ok(Event::Init) => listing = Some(BTreeSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let Some(names) = listing.as_mut() {
                    names.insert(pod.metadata.name.unwrap_or_default());
                }
            }
            Ok(Event::InitDone) => {
                if let Some(names) = listing.take() {
                    return names;
                }
            }
            Ok(Event::Delete(pod)) => panic!(
                "no deletion may be reported, got one for {:?}",
                pod.metadata.name
            ),
            Ok(Event::Apply(_)) | Err(_) => {}
        }
    }
}

#[tokio::test]
async fn the_watcher_lists_again_after_expiry_and_never_hears_of_a_silent_deletion() {
    let emu = emulator().await;
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let mut events = watcher::watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let all: BTreeSet<String> = ["app-0", "app-1", "app-2", "web-3"]
        .map(String::from)
        .into();
    assert_eq!(next_listing(&mut events).await, all);

    assert!(emu.delete_pod_silently("default", "app-1"));
    assert!(!emu.delete_pod_silently("default", "app-1"), "gone already");
    let names: Vec<_> = pods
        .list(&ListParams::default())
        .await
        .expect("lists keep working")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["app-0", "app-2", "web-3"]);

    emu.expire_watches(Duration::from_millis(300));
    let relisted = next_listing(&mut events).await;
    assert_eq!(
        relisted,
        ["app-0", "app-2", "web-3"].map(String::from).into(),
        "the re-list after expiry no longer has the silently deleted pod"
    );
}

#[tokio::test]
async fn watches_from_a_resource_version_get_410_while_expired_and_before_a_compaction() {
    let emu = emulator().await;
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let rv = list_version(&pods).await;

    // A live watch ends with the error, then the stream ends.
    let mut live = pods
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    emu.expire_watches(Duration::from_secs(60));
    let first = tokio::time::timeout(Duration::from_secs(5), live.try_next())
        .await
        .expect("an event in time")
        .expect("a good line");
    match first {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version: "),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), live.try_next()).await;
    assert!(
        matches!(end, Ok(Ok(None))),
        "the watch ends after the error"
    );

    // New watches from a version get the same for the window; lists and plain watches work.
    let mut again = pods
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        again.try_next().await,
        Ok(Some(WatchEvent::Error(s))) if s.code == 410
    ));
    pods.list(&ListParams::default()).await.expect("lists work");
    let mut fresh = pods
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        fresh.try_next().await,
        Ok(Some(WatchEvent::Added(_)))
    ));

    // A silent deletion drops the history before it, window or not.
    let emu = emulator().await;
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let before = list_version(&pods).await;
    assert!(emu.delete_pod_silently("default", "web-3"));
    let mut old = pods
        .watch(&WatchParams::default().timeout(30), &before)
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        old.try_next().await,
        Ok(Some(WatchEvent::Error(s))) if s.code == 410
    ));
}
