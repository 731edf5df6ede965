//! What IT installs: the systemd units (checked with systemd-analyze, as systemd is not PID 1
//! here) and helperd started from a socket passed the way systemd passes it.

use std::time::Duration;

use erlbridge_testbed::{Bins, Cluster, Helperd, User, Workstation, require_root};
use nix::sys::signal::Signal;

fn packaging(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

/// The units with ExecStart pointing at this build's helperd, so `verify` can check it.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let helperd = erlbridge_testbed::bins::build_dir()
        .expect("build dir")
        .join("erlbridge-helperd");
    assert!(
        helperd.exists(),
        "build the binaries first: cargo build --workspace --bins"
    );
    let service =
        std::fs::read_to_string(packaging("erlbridge-helperd.service")).expect("service unit");
    assert!(
        service.contains("ExecStart=/usr/sbin/erlbridge-helperd "),
        "{service}"
    );
    let service = service.replace(
        "/usr/sbin/erlbridge-helperd",
        &helperd.display().to_string(),
    );
    std::fs::write(dir.path().join("erlbridge-helperd.service"), service).expect("write");
    std::fs::copy(
        packaging("erlbridge-helperd.socket"),
        dir.path().join("erlbridge-helperd.socket"),
    )
    .expect("copy");
    dir
}

#[test]
fn systemd_accepts_the_units_and_rates_the_service_ok() {
    let dir = units();
    let socket = dir.path().join("erlbridge-helperd.socket");
    let service = dir.path().join("erlbridge-helperd.service");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args([&socket, &service])
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let security = std::process::Command::new("systemd-analyze")
        .args(["--offline=true", "security"])
        .arg(&service)
        .output()
        .expect("systemd-analyze");
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let verdict = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("a verdict")
        .to_owned();
    println!("{verdict}");
    let score: f64 = verdict
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a score");
    assert!(
        score <= 2.0,
        "exposure {score} is above the 2.0 goal:\n{report}"
    );

    let unit = std::fs::read_to_string(&service).expect("read");
    for line in [
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "SystemCallFilter=@system-service",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    assert!(
        !unit.lines().any(|l| l.starts_with("PrivateNetwork=")),
        "the rules must land in the host's namespace"
    );
    let socket_unit = std::fs::read_to_string(&socket).expect("read");
    for line in [
        "ListenStream=/run/erlbridge/helper.sock",
        "SocketGroup=erlbridge",
        "SocketMode=0660",
    ] {
        assert!(socket_unit.lines().any(|l| l == line), "{line} missing");
    }
    let sysusers = std::fs::read_to_string(packaging("erlbridge.sysusers")).expect("sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["g", "erlbridge", "-", "-"])
    );
}

#[test]
fn a_socket_activated_helper_serves_a_bridge() {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe", "erlbridge"]).expect("binaries");
    let ws = Workstation::new().expect("workstation");
    let cluster = Cluster::start(
        &ws,
        "[[pods]]\nname = \"app-0\"\nenv = { RELEASE_NODE = \"app@$(POD_IP)\", RELEASE_COOKIE = \"monster\" }\n",
    )
    .expect("cluster");
    let mut helperd = Helperd::start_activated(&ws, &bins, "").expect("socket-activated helperd");
    let user = User::member(61050);
    let node = format!("app@{}", cluster.pod("app-0").ip());
    let connect =
        format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}");
    assert_eq!(
        ws.erl_eval(
            &user,
            "monster",
            &format!("net_kernel:connect_node('{node}')"),
            &[]
        )
        .expect("eval"),
        "false"
    );

    let kubeconfig = cluster.kubeconfig.display().to_string();
    let socket = helperd.socket.display().to_string();
    let mut up = ws
        .spawn_as(
            &user,
            &[
                &bins.path("erlbridge"),
                "up",
                "app-0",
                "--kubeconfig",
                &kubeconfig,
                "--helper-socket",
                &socket,
                "--output",
                "json",
            ],
        )
        .expect("erlbridge");
    up.wait_line(Duration::from_secs(60), |l| l.contains("\"ready\""))
        .expect("ready");
    assert_eq!(
        ws.erl_eval(&user, "monster", &connect, &[]).expect("eval"),
        format!("{{true,'{node}'}}")
    );
    assert!(
        helperd
            .log()
            .contains("serving on the socket systemd passed"),
        "{}",
        helperd.log()
    );
    drop(up);

    assert_eq!(helperd.stop(Signal::SIGTERM).expect("stops"), 0);
    assert_eq!(ws.helper_table(), None, "SIGTERM removes the table");
    assert!(
        helperd.socket.exists(),
        "the socket is systemd's to remove, not helperd's"
    );
}
