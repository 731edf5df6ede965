//! One host, two local users (a shared development box, a CI runner with jobs of several
//! projects): a bridge serves only the user who runs it. Another uid sees its listeners
//! (`ss -ltn` shows them to anyone) and connects, and gets nothing from the pods, at no cost to
//! the owner's API credentials; the owner is told once. And a user with no writable home and
//! no XDG_RUNTIME_DIR still bridges: nat mode writes no file, epmd mode keeps its files in a
//! private directory of the temporary directory, which it refuses when someone made it first.
//! Everything as unprivileged uids.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use erlbridge_testbed::events::{self, Event, Mode};
use erlbridge_testbed::{Scenario, Spawned, User, listening_addrs};

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[pods]]
name = "app-0"
labels = { shared = "yes" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }

[[pods]]
name = "v6-0"
labels = { shared = "yes" }
ip_family = "IPv6"
env = { RELEASE_NODE = "v6@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

/// EPMD's NAMES request.
const NAMES: &str = "00016e";

/// A distribution handshake's first message (`send_name`, version 6) from a hidden node
/// `name`, with the flags an OTP 25 node requires of its peers.
fn send_name(name: &str) -> String {
    let flags: u64 = 0x07df_fffc | (1 << 32) | (1 << 34) | (1 << 35);
    let mut body = vec![b'N'];
    body.extend_from_slice(&flags.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(
        &u16::try_from(name.len())
            .expect("a short name")
            .to_be_bytes(),
    );
    body.extend_from_slice(name.as_bytes());
    let mut message = u16::try_from(body.len())
        .expect("a short message")
        .to_be_bytes()
        .to_vec();
    message.extend(body);
    message.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a connection from `user` to `addr` that sends `request` (hex) gets back.
#[derive(Debug)]
struct Answer {
    text: String,
    bytes: usize,
    closed: bool,
}

fn talk(s: &Scenario, user: &User, addr: SocketAddr, request: &str) -> Answer {
    let probe = s.bins.path("helper-probe");
    let addr = addr.to_string();
    let (_, out, err) =
        s.ws.run_as(user, &[&probe, "talk", &addr, "--send", request])
            .expect("helper-probe");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("helper-probe talk printed {out:?} ({e}); stderr: {err}");
    });
    Answer {
        text: json["text"].as_str().unwrap_or_default().to_owned(),
        bytes: json["received"].as_str().unwrap_or_default().len() / 2,
        closed: json["closed"].as_bool().unwrap_or(false),
    }
}

/// Starts `helper-probe relay` as `user` on a loopback port, relaying to `to`; returns it and
/// where it listens.
fn relay(s: &Scenario, user: &User, to: &str) -> (Spawned, SocketAddr) {
    let probe = s.bins.path("helper-probe");
    let mut relay =
        s.ws.spawn_as(user, &[&probe, "relay", "127.0.0.1:0", to])
            .expect("relay");
    let line = relay
        .wait_line(Duration::from_secs(10), |l| l.contains("listening"))
        .expect("the relay listens");
    let json: serde_json::Value = serde_json::from_str(&line).expect("json");
    let addr = json["listening"]
        .as_str()
        .expect("address")
        .parse()
        .expect("an address");
    (relay, addr)
}

/// Every connection `intruder` makes to each of `listeners` (an EPMD request, a distribution
/// handshake) is closed at once with nothing from the pods, and costs no port-forward.
fn nothing_for(s: &Scenario, intruder: &User, listeners: &[SocketAddr]) {
    let forwards = s.cluster.emulator.port_forwards();
    for addr in listeners {
        for request in [NAMES.to_owned(), send_name("intruder@127.0.0.1")] {
            let answer = talk(s, intruder, *addr, &request);
            assert!(
                answer.bytes == 0 && answer.closed,
                "uid {}'s connection to {addr} got {answer:?}",
                intruder.uid
            );
        }
    }
    assert_eq!(
        s.cluster.emulator.port_forwards(),
        forwards,
        "a refused connection costs no port-forward"
    );
}

#[test]
fn another_users_connections_to_a_bridge_get_nothing_from_the_pods() {
    let s = Scenario::start(MANIFEST, 61160);
    let intruder = User::member(61161);
    let app0 = format!("app@{}", s.cluster.pod("app-0").ip());
    let v6 = format!("v6@{}", s.cluster.pod("v6-0").ip());
    assert!(!s.reaches(COOKIE, &app0), "the control");

    // nat mode, both families.
    let (mut up, ready) = s.up(&["-l", "shared=yes"]);
    assert_eq!((ready.mode, ready.nodes.len()), (Mode::Nat, 2));
    let listeners = listening_addrs(up.pid());
    assert!(
        listeners.iter().any(SocketAddr::is_ipv4) && listeners.iter().any(SocketAddr::is_ipv6),
        "forwards on 127.0.0.1 and ::1: {listeners:?}"
    );

    // The control: through a plain relay of the owner's (which checks nobody) to the pod's
    // addresses, the other uid reads the pod's epmd and gets the node's challenge. The probe
    // sees a leak where there is one.
    let pod_ip = s.cluster.pod("app-0").ip();
    let (epmd_relay, at) = relay(&s, &s.user, &format!("{pod_ip}:4369"));
    let leaked = talk(&s, &intruder, at, NAMES);
    assert!(leaked.text.contains("name app at port 9100"), "{leaked:?}");
    drop(epmd_relay);
    let (dist_relay, at) = relay(&s, &s.user, &format!("{pod_ip}:9100"));
    let leaked = talk(&s, &intruder, at, &send_name("intruder@127.0.0.1"));
    assert!(
        leaked.text.contains("sok") && leaked.text.contains(&app0),
        "{leaked:?}"
    );
    drop(dist_relay);

    // Straight to the bridge's own listeners: nothing, and one event naming the uid.
    nothing_for(&s, &intruder, &listeners);
    let refused = events::wait(&mut up, Duration::from_secs(10), |e| {
        matches!(e, Event::ConnectionRefused { .. })
    });
    let Event::ConnectionRefused { uid, message, .. } = refused else {
        unreachable!()
    };
    assert_eq!(uid, Some(intruder.uid));
    assert!(
        message.contains(&format!("uid {}", intruder.uid)),
        "{message}"
    );
    nothing_for(&s, &intruder, &listeners);
    up.lines_for(Duration::from_millis(500));
    let said = up
        .seen()
        .iter()
        .filter_map(|l| events::parse(l))
        .filter(|e| matches!(e, Event::ConnectionRefused { .. }))
        .count();
    assert_eq!(said, 1, "once per uid, not per connection: {:?}", up.seen());

    // The owner's own local nodes still reach both pods through the same listeners.
    assert!(s.reaches(COOKIE, &app0));
    let call = format!("{{net_kernel:connect_node('{v6}'), rpc:call('{v6}', erlang, node, [])}}");
    assert_eq!(
        s.local(COOKIE, &call, &["-proto_dist", "inet6_tcp"]),
        format!("{{true,'{v6}'}}")
    );
    drop(up);
    s.wait_no_mappings(Duration::from_secs(5));

    // epmd mode, in text mode: the warning is one line on stderr.
    let argv = s.erlbridge("up", &["app-0", "--mode", "epmd"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut up = Spawned::start_capturing(s.ws.command_as(&s.user, &argv).expect("command"))
        .expect("erlbridge");
    let export = up
        .wait_line(Duration::from_secs(60), |l| {
            l.contains("export ERL_AFLAGS=")
        })
        .expect("the flags");
    let flags: Vec<String> = export
        .split_once("ERL_AFLAGS=")
        .map(|(_, f)| f.trim().trim_matches('"'))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let listeners = listening_addrs(up.pid());
    assert!(!listeners.is_empty());
    nothing_for(&s, &intruder, &listeners);
    nothing_for(&s, &intruder, &listeners);
    let warning = format!("refused a connection of uid {}", intruder.uid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !up.errors().iter().any(|l| l.contains(&warning)) {
        assert!(std::time::Instant::now() < deadline, "{:?}", up.errors());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<String> = up
        .errors()
        .into_iter()
        .filter(|l| l.contains(&warning))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("erlbridge: warning: "), "{lines:?}");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let call =
        format!("{{net_kernel:connect_node('{app0}'), rpc:call('{app0}', erlang, node, [])}}");
    assert_eq!(s.local(COOKIE, &call, &flags), format!("{{true,'{app0}'}}"));
}

/// `erlbridge up ARGS --output json` as `user` with `home` as HOME, `tmp` as TMPDIR and no
/// XDG_RUNTIME_DIR (the user's environment is otherwise empty).
fn up_as(s: &Scenario, user: &User, home: &Path, tmp: &Path, args: &[&str]) -> Spawned {
    let mut argv = vec![format!("TMPDIR={}", tmp.display())];
    argv.extend(s.erlbridge("up", args));
    argv.extend(["--output".to_owned(), "json".to_owned()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let wrapped = user.wrap(&home.display().to_string(), &argv);
    let wrapped: Vec<&str> = wrapped.iter().map(String::as_str).collect();
    Spawned::start_capturing(s.ws.ns.command(&wrapped)).expect("erlbridge")
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("a directory")
        .map(|e| e.expect("entry").path())
        .collect()
}

#[test]
fn no_writable_home_and_no_xdg_runtime_dir() {
    let s = Scenario::start(MANIFEST, 61162);
    let app0 = format!("app@{}", s.cluster.pod("app-0").ip());
    assert!(!s.reaches(COOKIE, &app0), "the control");
    // A home the user cannot write (root's, 0755), and a temporary directory like /tmp.
    let home = s.ws.scratch().join("read-only-home");
    std::fs::create_dir(&home).expect("home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tmp = s.ws.scratch().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");

    // nat mode with IP-named nodes writes nothing at all.
    let mut up = up_as(&s, &s.user, &home, &tmp, &["app-0", "--mode", "nat"]);
    let ready = events::ready(&mut up, Duration::from_secs(60));
    assert_eq!(ready.mode, Mode::Nat);
    assert!(s.reaches(COOKIE, &app0));
    assert_eq!(entries(&home), Vec::<PathBuf>::new());
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new());
    drop(up);
    s.wait_no_mappings(Duration::from_secs(5));

    // epmd mode: a private directory in the temporary directory.
    let mut up = up_as(&s, &s.user, &home, &tmp, &["app-0", "--mode", "epmd"]);
    let ready = events::ready(&mut up, Duration::from_secs(60));
    assert_eq!(ready.mode, Mode::Epmd);
    let base = tmp.join(format!("erlbridge-{}", s.user.uid));
    let flags = ready.flags();
    let dir = PathBuf::from(&flags[flags.iter().position(|f| f == "-pa").expect("-pa") + 1]);
    assert_eq!(dir.parent(), Some(base.as_path()), "{flags:?}");
    let meta = std::fs::symlink_metadata(&base).expect("base");
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (s.user.uid, 0o700)
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let call =
        format!("{{net_kernel:connect_node('{app0}'), rpc:call('{app0}', erlang, node, [])}}");
    assert_eq!(s.local(COOKIE, &call, &flags), format!("{{true,'{app0}'}}"));
    up.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(up.wait_exit(Duration::from_secs(10)).expect("exits"), 0);
    assert!(!dir.exists(), "its directory goes with it");
    std::fs::remove_dir(&base).expect("empty");

    // Someone else made the directory first: refused, with why, and nothing is set up.
    let squatter = User::outsider(61163);
    std::fs::create_dir(&base).expect("mkdir");
    std::os::unix::fs::chown(&base, Some(squatter.uid), Some(squatter.gid)).expect("chown");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut up = up_as(&s, &s.user, &home, &tmp, &["app-0", "--mode", "epmd"]);
    let code = up.wait_exit(Duration::from_secs(60)).expect("exits");
    let error = events::all(&up.lines_for(Duration::from_millis(200)).join("\n"))
        .into_iter()
        .chain(events::all(&up.seen().join("\n")))
        .find_map(|e| match e {
            Event::Error { message, .. } => Some(message),
            _ => None,
        })
        .expect("an error event");
    assert_eq!(code, 1, "{error}");
    assert!(
        error.contains(&base.display().to_string())
            && error.contains(&format!("owner uid {}", squatter.uid))
            && error.contains("someone may have made it first"),
        "{error}"
    );
    assert_eq!(
        entries(&base),
        Vec::<PathBuf>::new(),
        "nothing written there"
    );
    assert_eq!(s.mappings(), 0);
}
