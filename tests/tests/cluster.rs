//! The test cluster itself, checked with the clients that will be pointed at it: real kubectl,
//! kube-rs, and real Erlang nodes. Needs root: CI runs it as root.

#[allow(dead_code)] // each test binary uses its own part of it
mod harness;

use std::time::Duration;

use erlbridge_testbed::{Bins, Cluster, User, Workstation};
use futures::TryStreamExt;
use harness::{epmd_names, kubectl, pods};
use kube::api::{ListParams, WatchEvent, WatchParams};

const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
ports = [{ name = "epmd", port = 4369 }, { name = "dist", port = 9100 }]
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }

[[pods]]
name = "solo"
labels = { app = "solo" }
ports = [{ name = "epmd", port = 4369 }]
env = { RELEASE_NODE = "solo@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[secrets]]
name = "app-cookie"
data = { cookie = "monster" }
"#;

fn cluster() -> (Workstation, Cluster) {
    harness::cluster(MANIFEST)
}

#[test]
fn kubectl_reads_the_emulator() {
    let (ws, cluster) = cluster();
    let user = User::outsider(61010);
    let kubectl =
        |kubeconfig: &std::path::Path, args: &[&str]| kubectl(&ws, &user, kubeconfig, args);
    let (code, out, err) = kubectl(&cluster.kubeconfig, &["get", "pods", "-o", "name"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["pod/app-0", "pod/app-1", "pod/solo"]
    );
    let (_, out, _) = kubectl(
        &cluster.kubeconfig,
        &["get", "pods", "-l", "app=app", "-o", "name"],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, err) = kubectl(
        &cluster.kubeconfig,
        &["get", "pod", "app-1", "-o", "jsonpath={.status.podIP}"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, cluster.pod("app-1").ip());
    let (code, out, err) = kubectl(
        &cluster.kubeconfig,
        &[
            "get",
            "statefulset",
            "app",
            "-o",
            "jsonpath={.spec.replicas} {.spec.selector.matchLabels.app}",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "2 app"), "{err}");
    let (code, _, err) = kubectl(&cluster.kubeconfig, &["get", "pod", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("NotFound") && err.contains("pods \"nope\" not found"),
        "{err}"
    );
    let (code, _, err) = kubectl(&cluster.no_rights_kubeconfig, &["get", "pods"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Forbidden") && err.contains("cannot list resource \"pods\""),
        "{err}"
    );
}

#[test]
fn kube_rs_gets_lists_watches_and_forwards_to_epmd() {
    let (ws, mut cluster) = cluster();
    let kubeconfig = cluster.kubeconfig.clone();
    let app0_ip = cluster.pod("app-0").ip();
    let (rv, names, solo) = ws
        .block_on(move || async move {
            let pods = pods(kubeconfig).await;
            let app0 = pods.get("app-0").await.expect("get");
            assert_eq!(app0.status.and_then(|s| s.pod_ip), Some(app0_ip));
            let list = pods
                .list(&ListParams::default().labels("app=app"))
                .await
                .expect("list");
            assert_eq!(list.items.len(), 2);
            let names = epmd_names(&pods, "app-0").await;
            let solo = epmd_names(&pods, "solo").await;
            (
                list.metadata.resource_version.unwrap_or_default(),
                names,
                solo,
            )
        })
        .expect("workstation");
    assert_eq!(
        names,
        [("app".to_owned(), 9100)],
        "the pod node and its fixed port"
    );
    assert_eq!(solo.len(), 1);
    assert_eq!(solo[0].0, "solo");
    assert!(solo[0].1 > 1024, "a random distribution port: {solo:?}");

    let old_ip = cluster.pod("app-1").ip();
    let new_ip = cluster.restart_pod_with_new_ip("app-1").expect("restart");
    assert_ne!(old_ip, new_ip);
    let kubeconfig = cluster.kubeconfig.clone();
    let seen = ws
        .block_on(move || async move {
            let pods = pods(kubeconfig).await;
            let mut events = Box::pin(
                pods.watch(&WatchParams::default().labels("app=app").timeout(20), &rv)
                    .await
                    .expect("watch"),
            );
            let mut seen = Vec::new();
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(10), events.try_next())
                    .await
                    .expect("events in time")
            {
                let (kind, pod) = match event {
                    WatchEvent::Added(p) => ("ADDED", p),
                    WatchEvent::Modified(p) => ("MODIFIED", p),
                    WatchEvent::Deleted(p) => ("DELETED", p),
                    _ => continue,
                };
                let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
                seen.push(format!(
                    "{kind} {} {ip}",
                    pod.metadata.name.unwrap_or_default()
                ));
                if kind == "MODIFIED" {
                    break;
                }
            }
            seen
        })
        .expect("workstation");
    assert_eq!(
        seen,
        [
            format!("DELETED app-1 {old_ip}"),
            "ADDED app-1 ".to_owned(),
            format!("MODIFIED app-1 {new_ip}")
        ]
    );
    // The restarted node is back in the cluster under its new name.
    let nodes = cluster.pod("app-0").nodes().expect("nodes");
    assert!(nodes.contains(&format!("app@{new_ip}")), "{nodes:?}");
}

#[test]
fn pods_reach_each_other_but_the_workstation_reaches_no_pod() {
    let (ws, cluster) = cluster();
    let bins = Bins::stage(&["helper-probe"]).expect("binaries");
    let user = User::outsider(61011);
    for pod in cluster.pods() {
        let addr = format!("{}:4369", pod.ip());
        let (code, out, _) = ws
            .run_as(&user, &[&bins.path("helper-probe"), "connect", &addr])
            .expect("probe");
        assert_ne!(code, 0, "the workstation must not reach {addr}: {out}");
    }
    let app0 = cluster.pod("app-0");
    let app1 = cluster.pod("app-1");
    assert_eq!(app0.nodes().expect("nodes"), [format!("app@{}", app1.ip())]);
    assert_eq!(app1.nodes().expect("nodes"), [format!("app@{}", app0.ip())]);
    // A local node in the workstation cannot reach a pod node either.
    let expr = format!("net_kernel:connect_node('app@{}')", app0.ip());
    assert_eq!(
        ws.erl_eval(&user, "monster", &expr, &[]).expect("eval"),
        "false"
    );
}

#[test]
fn everything_it_started_is_gone_afterwards() {
    let (ws, cluster) = cluster();
    let mut names = cluster.namespace_names();
    names.push(ws.ns.name().to_owned());
    let pids: Vec<i32> = cluster.pods().flat_map(|p| p.netns().pids()).collect();
    assert!(pids.len() >= 6, "erl and epmd in each pod: {pids:?}");
    drop(cluster);
    drop(ws);
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "{name} is still there:\n{listed}"
        );
    }
    // Running means: present and not a zombie (a zombie has exited and awaits its reaper).
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|p| running(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = pids.into_iter().filter(|p| running(*p)).collect();
    assert!(
        left.is_empty(),
        "processes outlived their cluster: {left:?}"
    );
}
