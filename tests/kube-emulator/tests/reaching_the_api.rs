//! Ways to the API that companies put in between, through kube-rs and kubectl: a path prefix
//! (Rancher-style), an HTTP CONNECT proxy, and servers that do not answer access reviews.

#[allow(dead_code)] // each test binary uses its own part of it
mod common;

use std::time::Duration;

use common::{
    client_for, connect, echo_server, forward_and_shout, kubectl_pods, pod, populate, tls, write,
};
use erlbridge_kube_emulator::kubeconfig::{KubeCluster, KubeContext, KubeUser, Kubeconfig};
use erlbridge_kube_emulator::{AccessReviews, ConnectProxy, Emulator, StartOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "/k8s/clusters/c-abc";

fn with_token(cluster: KubeCluster) -> String {
    Kubeconfig::default()
        .context(KubeContext::new(
            "ctx",
            cluster,
            KubeUser::token("tester", "good"),
            "default",
        ))
        .to_yaml()
}

#[tokio::test]
async fn behind_a_path_prefix_every_route_carries_it() {
    tls();
    let emu = Emulator::start_with(
        "127.0.0.1:0".parse().expect("an address"),
        None,
        StartOptions::default().path_prefix(PREFIX),
    )
    .await
    .expect("start");
    populate(&emu);
    assert!(emu.server_url().ends_with(PREFIX), "{}", emu.server_url());
    let port = echo_server("127.0.0.6:0").await;
    emu.apply_pod(pod("echo", "127.0.0.6", "echo"));

    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    let listed = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .expect("list under the prefix");
    assert_eq!(listed.items.len(), 3);
    let mut events = pods
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .expect("watch under the prefix")
        .boxed();
    assert!(matches!(
        events.try_next().await,
        Ok(Some(WatchEvent::Added(_)))
    ));
    assert_eq!(forward_and_shout(&pods, "echo", port).await, "HELLO POD\n");

    // The same server without the prefix: nothing there.
    let bare = format!("https://{}", emu.addr());
    let bare = with_token(KubeCluster::new("bare", &bare, emu.ca_pem()));
    let bare: Api<Pod> = Api::default_namespaced(client_for(&bare).await);
    match bare.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404 outside the prefix, got {other:?}"),
    }

    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "kubeconfig", &emu.kubeconfig("good", "default"));
    let out = kubectl_pods(dir.path(), &path).await;
    assert!(out.contains("pod/app-0"), "{out}");
}

#[tokio::test]
async fn kube_rs_and_kubectl_reach_the_api_through_the_connect_proxy() {
    let emu = common::emulator().await;
    let port = echo_server("127.0.0.7:0").await;
    emu.apply_pod(pod("echo", "127.0.0.7", "echo"));
    let proxy = ConnectProxy::start(
        "127.0.0.1:0".parse().expect("an address"),
        None,
        Some(("u", "p@ss")),
    )
    .await
    .expect("proxy");

    let kubeconfig = with_token(emu.kube_cluster("proxied").with_proxy(&proxy.url()));
    let pods: Api<Pod> = Api::default_namespaced(client_for(&kubeconfig).await);
    assert_eq!(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        5
    );
    assert_eq!(forward_and_shout(&pods, "echo", port).await, "HELLO POD\n");
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty());
    for tunnel in &tunnels {
        assert_eq!(tunnel.target, emu.addr().to_string());
        assert_eq!(tunnel.user.as_deref(), Some("u"));
        assert!(tunnel.sent > 0 && tunnel.received > 0, "{tunnel:?}");
    }

    // Wrong credentials: 407, and the client fails.
    let wrong = format!("http://u:nope@{}", proxy.addr());
    let denied = with_token(emu.kube_cluster("denied").with_proxy(&wrong));
    let denied: Api<Pod> = Api::default_namespaced(client_for(&denied).await);
    assert!(denied.list(&ListParams::default()).await.is_err());
    assert!(proxy.refused() >= 1, "the proxy said 407");

    // Anything but CONNECT: 405.
    let mut plain = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    plain
        .write_all(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");

    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "kubeconfig", &kubeconfig);
    let before = proxy.tunnels().len();
    let out = kubectl_pods(dir.path(), &path).await;
    assert!(out.contains("pod/echo"), "{out}");
    assert!(
        proxy.tunnels().len() > before,
        "kubectl went through the proxy"
    );
}

async fn review(client: kube::Client) -> Result<bool, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("list".into()),
                resource: Some("pods".into()),
                namespace: Some("default".into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client)
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn lists_authorization(client: &kube::Client) -> bool {
    client
        .list_api_groups()
        .await
        .expect("groups")
        .groups
        .iter()
        .any(|g| g.name == "authorization.k8s.io")
}

#[tokio::test]
async fn access_reviews_can_be_missing_or_forbidden() {
    let emu = common::emulator().await;
    let client = connect(&emu, "good").await;
    assert!(review(client.clone()).await.expect("served"));
    assert!(!review(connect(&emu, "none").await).await.expect("served"));
    assert!(lists_authorization(&client).await);

    emu.set_access_reviews(AccessReviews::NotServed);
    match review(client.clone()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    assert!(!lists_authorization(&client).await);
    assert!(
        client
            .list_api_group_resources("authorization.k8s.io/v1")
            .await
            .is_err()
    );

    emu.set_access_reviews(AccessReviews::Forbidden);
    match review(client.clone()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert!(s.message.contains("at the cluster scope"), "{}", s.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(lists_authorization(&client).await);
}
