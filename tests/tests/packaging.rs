//! What IT installs: the systemd units (checked with systemd-analyze, as systemd is not PID 1
//! here) and helperd started from a socket passed the way systemd passes it.

use std::os::unix::fs::PermissionsExt;
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
        score <= 1.7,
        "exposure {score} is above the 1.7 it was:\n{report}"
    );

    let unit = std::fs::read_to_string(&service).expect("read");
    for line in [
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "SystemCallFilter=@system-service",
        "NoNewPrivileges=yes",
        // Above max_connections (512) plus what helperd reserves besides (96).
        "LimitNOFILE=1024",
        "MemoryMax=64M",
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

fn dpkg_deb(args: &[&str]) -> String {
    let out = std::process::Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_puts_everything_where_it_belongs() {
    let deb = erlbridge_testbed::package::built().unwrap_or_else(|e| panic!("{e:#}"));
    let deb = deb.to_str().expect("path");
    let root = tempfile::tempdir().expect("tempdir");
    let root_s = root.path().to_str().expect("path");
    dpkg_deb(&["-x", deb, root_s]);
    for (path, mode) in [
        ("usr/bin/erlbridge", 0o755),
        ("usr/sbin/erlbridge-helperd", 0o755),
        ("etc/erlbridge/helperd.toml", 0o644),
        ("usr/lib/systemd/system/erlbridge-helperd.service", 0o644),
        ("usr/lib/systemd/system/erlbridge-helperd.socket", 0o644),
        ("usr/lib/sysusers.d/erlbridge.conf", 0o644),
        ("usr/share/man/man1/erlbridge.1", 0o644),
        ("usr/share/man/man1/erlbridge-up.1", 0o644),
        ("usr/share/man/man1/erlbridge-remsh.1", 0o644),
        ("usr/share/man/man1/erlbridge-observer.1", 0o644),
        ("usr/share/man/man1/erlbridge-top.1", 0o644),
        ("usr/share/man/man1/erlbridge-eval.1", 0o644),
        ("usr/share/man/man1/erlbridge-status.1", 0o644),
        ("usr/share/man/man1/erlbridge-doctor.1", 0o644),
        ("usr/share/bash-completion/completions/erlbridge", 0o644),
        ("usr/share/zsh/vendor-completions/_erlbridge", 0o644),
        ("usr/share/fish/vendor_completions.d/erlbridge.fish", 0o644),
    ] {
        let meta = std::fs::metadata(root.path().join(path))
            .unwrap_or_else(|_| panic!("{path} is not in the package"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
    }
    let plugin = root.path().join("usr/bin/kubectl-erlbridge");
    assert_eq!(
        std::fs::read_link(&plugin).expect("a symlink").to_str(),
        Some("erlbridge")
    );
    // kubectl runs the plugin with the words after `kubectl erlbridge`.
    let help = std::process::Command::new(&plugin)
        .args(["up", "--help"])
        .output()
        .expect("plugin");
    // And kubectl itself finds it on PATH: `kubectl erlbridge ...` runs it.
    let path = format!(
        "{}:{}",
        root.path().join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let via_kubectl = std::process::Command::new("kubectl")
        .args(["erlbridge", "up", "--help"])
        .env("PATH", path)
        .output()
        .expect("kubectl");
    assert!(
        String::from_utf8_lossy(&via_kubectl.stdout).contains("Exit codes:"),
        "kubectl erlbridge: {}",
        String::from_utf8_lossy(&via_kubectl.stderr)
    );
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes:"));
    let service = std::fs::read_to_string(
        root.path()
            .join("usr/lib/systemd/system/erlbridge-helperd.service"),
    )
    .expect("unit");
    assert!(
        service
            .contains("ExecStart=/usr/sbin/erlbridge-helperd --config /etc/erlbridge/helperd.toml")
    );

    // Every erlbridge-*(1) page a page refers to is shipped.
    let man = root.path().join("usr/share/man/man1");
    for entry in std::fs::read_dir(&man).expect("man pages") {
        let page = std::fs::read_to_string(entry.expect("entry").path()).expect("page");
        for reference in page.replace("\\-", "-").split_whitespace() {
            if let Some(name) = reference
                .strip_suffix("(1)")
                .filter(|n| n.starts_with("erlbridge"))
            {
                assert!(
                    man.join(format!("{name}.1")).exists(),
                    "{name}(1) is referred to but not shipped"
                );
            }
        }
    }
    // The recording backend is for tests only.
    let helperd = std::fs::read(root.path().join("usr/sbin/erlbridge-helperd")).expect("helperd");
    assert!(
        !helperd
            .windows(b"recording fake".len())
            .any(|w| w == b"recording fake"),
        "the test backend is compiled into the shipped helper"
    );

    let depends = dpkg_deb(&["-f", deb, "Depends"]);
    // What the maintainer scripts run: systemd-sysusers, groupdel.
    for package in ["nftables", "iproute2", "systemd", "passwd"] {
        assert!(
            depends.split(',').any(|d| d.trim().starts_with(package)),
            "{package} missing from {depends}"
        );
    }
    let control = tempfile::tempdir().expect("tempdir");
    dpkg_deb(&["-e", deb, control.path().to_str().expect("path")]);
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/erlbridge/helperd.toml");
    let postinst = read("postinst");
    assert!(
        postinst.contains("systemd-sysusers") && postinst.contains("erlbridge.conf"),
        "the group is created:\n{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable erlbridge-helperd.socket"),
        "the socket is enabled:\n{postinst}"
    );
    assert!(
        postinst.contains("/var/lib/erlbridge/group-created")
            && postinst.contains("does not run systemd"),
        "the group's creation is remembered, a host without systemd is warned:\n{postinst}"
    );
    let postrm = read("postrm");
    assert!(
        postrm.contains("nft delete table inet erlbridge") && postrm.contains("groupdel erlbridge"),
        "purge cleans up:\n{postrm}"
    );
}
