//! Pods shaped as releases run them, through kube-rs and kubectl: sidecars before the Erlang
//! container, its own name, command and args, IPv6 and dual-stack addresses, and port-forwards
//! to a node that listens on IPv6 loopback only.

#[allow(dead_code)] // each test binary uses its own part of it
mod common;

use std::collections::BTreeMap;

use common::{connect, echo_server, emulator, forward_and_shout, kubectl, write};
use erlbridge_kube_emulator::store::PortDesc;
use erlbridge_kube_emulator::{ContainerDesc, IpFamily, PodDesc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

fn release() -> PodDesc {
    PodDesc {
        name: "rel-0".into(),
        ports: vec![PortDesc {
            name: Some("dist".into()),
            port: 9100,
        }],
        env: BTreeMap::from([("RELEASE_NODE".into(), "rel@fd00::8".into())]),
        ip: Some("10.244.1.8".parse().expect("ip")),
        second_ip: Some("fd00::8".parse().expect("ip")),
        ip_family: IpFamily::DualStack,
        container: Some("release".into()),
        command: vec!["/app/bin/rel".into()],
        args: vec!["start".into(), "-start_epmd".into(), "false".into()],
        sidecars: vec![ContainerDesc {
            name: "envoy".into(),
            image: "envoyproxy/envoy:v1.30".into(),
            ports: vec![PortDesc {
                name: Some("http".into()),
                port: 8080,
            }],
            env: BTreeMap::from([("ENVOY_UID".into(), "0".into())]),
            command: vec![],
            args: vec!["-c".into(), "/etc/envoy.yaml".into()],
        }],
        ..PodDesc::default()
    }
}

#[tokio::test]
async fn sidecars_come_first_and_the_erlang_container_keeps_its_own_shape() {
    let emu = emulator().await;
    emu.apply_pod(release());
    emu.apply_pod(PodDesc {
        name: "v6-0".into(),
        ip: Some("fd00::9".parse().expect("ip")),
        ip_family: IpFamily::IPv6,
        ..PodDesc::default()
    });
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);

    let rel = pods.get("rel-0").await.expect("get");
    let spec = rel.spec.expect("spec");
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["envoy", "release"]);
    let (envoy, erlang) = (&spec.containers[0], &spec.containers[1]);
    assert_eq!(envoy.ports.as_ref().expect("ports")[0].container_port, 8080);
    assert_eq!(
        envoy.args.as_deref(),
        Some(&["-c".to_owned(), "/etc/envoy.yaml".to_owned()][..])
    );
    assert_eq!(envoy.command, None);
    assert_eq!(
        erlang.command.as_deref(),
        Some(&["/app/bin/rel".to_owned()][..])
    );
    assert_eq!(erlang.args.as_ref().map(Vec::len), Some(3));
    assert_eq!(
        erlang.ports.as_ref().expect("ports")[0].name.as_deref(),
        Some("dist")
    );
    assert_eq!(erlang.env.as_ref().expect("env")[0].name, "RELEASE_NODE");
    let status = rel.status.expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.8"));
    let ips: Vec<_> = status
        .pod_ips
        .expect("podIPs")
        .into_iter()
        .map(|p| p.ip)
        .collect();
    assert_eq!(ips, ["10.244.1.8", "fd00::8"]);
    assert_eq!(status.container_statuses.map(|s| s.len()), Some(2));

    let v6 = pods.get("v6-0").await.expect("get").status.expect("status");
    assert_eq!(v6.pod_ip.as_deref(), Some("fd00::9"));
    assert_eq!(v6.pod_ips.map(|ips| ips.len()), Some(1));
    assert_eq!(
        pods.get("v6-0")
            .await
            .expect("get")
            .spec
            .expect("spec")
            .containers[0]
            .name,
        "app",
        "the default container name"
    );

    let dir = tempfile::tempdir().expect("dir");
    let path = write(dir.path(), "kubeconfig", &emu.kubeconfig("good", "default"));
    let jsonpath = "-o=jsonpath={.spec.containers[*].name} {.status.podIPs[*].ip}";
    let out = kubectl(
        dir.path(),
        &[],
        &["--kubeconfig", &path, "get", "pod", "rel-0", jsonpath],
    )
    .await;
    assert_eq!(out, "envoy release 10.244.1.8 fd00::8");
}

#[tokio::test]
async fn port_forward_falls_back_to_ipv6_loopback_when_ipv4_refuses() {
    let emu = emulator().await;
    let port = echo_server("[::1]:0").await;
    // No IP and no namespace: the emulator dials loopback here, as a kubelet does in the pod.
    emu.apply_pod(PodDesc {
        name: "v6-only".into(),
        ..PodDesc::default()
    });
    let pods: Api<Pod> = Api::default_namespaced(connect(&emu, "good").await);
    assert_eq!(
        forward_and_shout(&pods, "v6-only", port).await,
        "HELLO POD\n"
    );
}
