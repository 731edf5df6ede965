//! kube-rs (the client erlbridge uses) against the emulator, unprivileged and in-process:
//! objects, lists, paging, watches, errors and the port-forward framing.

#[allow(dead_code)] // each test binary uses its own part of it
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{connect, echo_server, emulator, pod, shout};
use erlbridge_kube_emulator::{SecretDesc, SelectorExpression, WorkloadDesc, WorkloadKind};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn objects_lists_and_errors() {
    let emu = emulator().await;
    emu.apply_workload(WorkloadDesc {
        kind: WorkloadKind::StatefulSet,
        name: "app".into(),
        namespace: "default".into(),
        replicas: 3,
        selector: BTreeMap::from([("app".into(), "app".into())]),
        match_expressions: Vec::new(),
        service_name: Some("app".into()),
    });
    emu.apply_workload(WorkloadDesc {
        kind: WorkloadKind::StatefulSet,
        name: "by-expressions".into(),
        namespace: "default".into(),
        replicas: 1,
        selector: BTreeMap::from([("app".into(), "x".into())]),
        match_expressions: vec![
            SelectorExpression {
                key: "app".into(),
                operator: "In".into(),
                values: vec!["x".into()],
            },
            SelectorExpression {
                key: "tier".into(),
                operator: "Exists".into(),
                values: Vec::new(),
            },
        ],
        service_name: Some("x".into()),
    });
    emu.apply_secret(SecretDesc {
        name: "cookie".into(),
        namespace: "default".into(),
        data: BTreeMap::from([("cookie".into(), "s3cret".into())]),
    });
    let client = connect(&emu, "good").await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    let app0 = pods.get("app-0").await.expect("get");
    assert_eq!(app0.status.unwrap().pod_ip.as_deref(), Some("127.0.0.1"));

    let listed = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .expect("list");
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["app-0", "app-1", "app-2"]);

    let page = pods
        .list(&ListParams::default().limit(2))
        .await
        .expect("page");
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("next page");
    assert_eq!(rest.items.len(), 2);
    assert!(rest.metadata.continue_.is_none());

    let sts: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let app = sts.get("app").await.expect("sts");
    let selector = app.spec.unwrap().selector.match_labels.unwrap();
    assert_eq!(selector.get("app").map(String::as_str), Some("app"));
    let by_expressions = sts.get("by-expressions").await.expect("sts");
    let selector = by_expressions.spec.unwrap().selector;
    assert_eq!(selector.match_labels, None);
    let expressions: Vec<(String, String, Option<Vec<String>>)> = selector
        .match_expressions
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.operator, e.values))
        .collect();
    assert_eq!(
        expressions,
        [
            ("app".into(), "In".into(), Some(vec!["x".into()])),
            ("tier".into(), "Exists".into(), None)
        ]
    );

    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let cookie = secrets.get("cookie").await.expect("secret");
    assert_eq!(cookie.data.unwrap()["cookie"].0, b"s3cret");

    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "pods \"nope\" not found");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let forbidden: Api<Pod> = Api::default_namespaced(connect(&emu, "none").await);
    match forbidden.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert!(
                s.message.contains("cannot list resource \"pods\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let unknown: Api<Pod> = Api::default_namespaced(connect(&emu, "forged").await);
    match unknown.get("app-0").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    emu.revoke_token("good");
    match pods.get("app-0").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("a revoked token must get Unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn watches_report_changes_from_a_resource_version() {
    let emu = emulator().await;
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let list = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let mut events = pods
        .watch(&WatchParams::default().labels("app=app").timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();

    let mut moved = pod("app-1", "127.0.0.9", "app");
    moved.restarts = 1;
    emu.apply_pod(moved);
    emu.apply_pod(pod("web-9", "127.0.0.10", "web"));
    emu.delete_pod("default", "app-2");

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("an event in time")
            .expect("a good event")
            .expect("the stream goes on");
        match event {
            WatchEvent::Modified(p) => seen.push(format!(
                "MODIFIED {} {}",
                p.metadata.name.unwrap(),
                p.status.unwrap().pod_ip.unwrap()
            )),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["MODIFIED app-1 127.0.0.9", "DELETED app-2"],
        "web-9 is not selected"
    );

    // Bookmarks carry the latest version.
    let mut events = pods
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .expect("watch")
        .boxed();
    let bookmark = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.try_next().await.expect("event") {
            if let WatchEvent::Bookmark(b) = event {
                return b.metadata.resource_version;
            }
        }
        panic!("the watch ended without a bookmark");
    })
    .await
    .expect("a bookmark in time");
    assert!(!bookmark.is_empty());
}

#[tokio::test]
async fn port_forward_speaks_the_kubelets_framing() {
    let emu = emulator().await;
    let port = echo_server("127.0.0.5:0").await;
    emu.apply_pod(pod("echo", "127.0.0.5", "echo"));
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let mut forward = pods
        .portforward("echo", &[port])
        .await
        .expect("portforward");
    let mut stream = forward.take_stream(port).expect("stream");
    assert_eq!(shout(&mut stream).await, "HELLO POD\n");
    drop(stream);
    // The pod side ended, so the server closed the connection (kube-rs's own join then reports
    // that it could not send its Close, which is how it meets real kubelets too).
    drop(forward);
    for _ in 0..100 {
        if emu.live_forwards() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        emu.live_forwards(),
        0,
        "the forward is closed on the server side"
    );

    // A port nothing listens on: the error channel says so.
    let mut forward = pods.portforward("echo", &[1]).await.expect("portforward");
    let error = forward.take_error(1).expect("error channel");
    let text = tokio::time::timeout(Duration::from_secs(5), error)
        .await
        .expect("an error in time")
        .expect("an error message");
    assert!(text.contains("error forwarding port 1"), "{text}");

    // Dropped on demand.
    let mut forward = pods
        .portforward("echo", &[port])
        .await
        .expect("portforward");
    let mut stream = forward.take_stream(port).expect("stream");
    for _ in 0..100 {
        if emu.live_forwards() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emu.drop_forwards();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a dropped forward ends the local stream");
    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("{other:?}"),
    }

    // Faults: a 5xx window (a 500, which kube-rs does not retry by itself, unlike 503).
    emu.fail_requests(500, Duration::from_millis(500));
    match pods.get("echo").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("expected 500, got {other:?}"),
    }
    assert!(
        pods.portforward("echo", &[port]).await.is_err(),
        "port-forwards fail in the window too"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    pods.get("echo")
        .await
        .expect("served again after the window");
}
