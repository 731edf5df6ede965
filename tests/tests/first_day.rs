//! What a person meets on the first day, each shown as it was seen: an API server that drops
//! packets, `doctor TARGET` against what `up` then does, `--ready-timeout` waiting for a pod,
//! `-- CMD` by the shell's rules, a socket whose group the login predates, and errors told in
//! plain sentences. Helper as root, the rest as an unprivileged uid.

use std::time::{Duration, Instant};

use erlbridge_kube_emulator::AccessReviews;
use erlbridge_testbed::events::{self, Event};
use erlbridge_testbed::{Helperd, Scenario, User};
use nix::sys::signal::Signal;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[deployments]]
name = "web"
replicas = 1
labels = { app = "web" }
env = { RELEASE_NODE = "web@$(POD_IP)", RELEASE_COOKIE = "monster" }

[[pods]]
name = "noepmd"
labels = { app = "noepmd" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    format!("app@{}", s.cluster.pod(pod).ip())
}

#[test]
fn an_api_server_that_drops_packets_ends_each_command_within_its_bound() {
    let s = Scenario::start(MANIFEST, 61120);
    assert!(!s.reaches(COOKIE, &node(&s, "app-0")), "the control");
    // Packets dropped, not refused: a VPN that went down.
    let _dropped =
        s.ws.drop_packets_to(s.cluster.api_addr())
            .expect("drop rule");
    for (sub, args, code) in [
        ("up", vec!["app-0", "--request-timeout", "2s"], 5),
        ("remsh", vec!["app-0", "--request-timeout", "2s"], 5),
        ("doctor", vec!["app-0", "--request-timeout", "2s"], 1),
        ("up", vec!["app-0"], 5),
    ] {
        let started = Instant::now();
        let (got, out, err) = s.run(&s.user, sub, &args);
        let took = started.elapsed();
        assert_eq!(got, code, "{sub} {args:?}: {out}{err}");
        let bound = if args.contains(&"2s") { 2 } else { 10 };
        assert!(
            format!("{out}{err}").contains(&format!(
                "the API server at https://172.31.255.1:6443 did not answer in {bound} s"
            )),
            "{sub} {args:?}: {out}{err}"
        );
        assert!(
            took < Duration::from_secs(bound * 4 + 10),
            "{sub} {args:?} took {took:?}"
        );
    }
    // status asks only the helper: it is not held up.
    let (code, _, err) = s.run(&s.user, "status", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.mappings(), 0);
}

#[test]
fn doctor_target_fails_exactly_where_up_would() {
    let mut s = Scenario::start(MANIFEST, 61121);
    assert!(!s.reaches(COOKIE, &node(&s, "app-0")), "the control");
    let mut pending = s.cluster.pod("noepmd").desc.clone();
    pending.name = "pending".into();
    pending.phase = "Pending".into();
    pending.ready = false;
    s.cluster.emulator.apply_pod(pending);
    let doctor = |s: &Scenario, target: &str| -> (i32, Vec<String>) {
        let (code, out, err) = s.run(&s.user, "doctor", &[target, "--output", "json"]);
        let failed = events::all(&out)
            .into_iter()
            .filter_map(|e| match e {
                Event::Check {
                    check, ok: false, ..
                } => Some(check),
                _ => None,
            })
            .collect();
        assert!(
            events::all(&out)
                .iter()
                .any(|e| matches!(e, Event::Summary { .. })),
            "{out}{err}"
        );
        (code, failed)
    };
    let up = |s: &Scenario, target: &str| s.run(&s.user, "up", &[target, "--", "true"]).0;
    for (target, up_code, failing) in [
        ("app-0", 0, vec![]),
        ("statefulset.apps/app", 0, vec![]),
        ("StatefulSet/app", 0, vec![]),
        ("Deployment/web", 0, vec![]),
        ("nope", 3, vec!["target"]),
        ("pending", 4, vec!["target"]),
        ("noepmd", 4, vec!["epmd"]),
    ] {
        let (code, failed) = doctor(&s, target);
        assert_eq!(failed, failing, "{target}: doctor's failing checks");
        assert_eq!(code, i32::from(!failing.is_empty()), "{target}");
        assert_eq!(up(&s, target), up_code, "{target}: up");
    }
    // A pod network the helper's policy refuses.
    s.helper().stop(Signal::SIGTERM).expect("stop");
    s.helperd = Some(
        Helperd::start(&s.ws, &s.bins, "allowed_cidrs = [\"192.168.0.0/16\"]").expect("helperd"),
    );
    let (code, failed) = doctor(&s, "app-0");
    assert_eq!((code, failed), (1, vec!["policy".to_owned()]));
    assert_eq!(up(&s, "app-0"), 8, "up: the helper refuses the mapping");
    assert_eq!(s.mappings(), 0);
}

#[test]
fn ready_timeout_waits_for_the_pod_and_a_late_replica_is_bridged_when_ready() {
    let s = Scenario::start(MANIFEST, 61122);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let ready = |pod: &str, ready: bool| {
        let mut desc = s.cluster.emulator.pod("default", pod).expect("pod");
        desc.ready = ready;
        s.cluster.emulator.apply_pod(desc);
    };
    ready("app-0", false);
    let argv = s.erlbridge(
        "up",
        &["app-0", "--ready-timeout", "60", "--output", "json"],
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut up = s.ws.spawn_as(&s.user, &argv).expect("erlbridge");
    let waiting = events::wait(&mut up, Duration::from_secs(20), |_| true);
    assert!(
        matches!(&waiting, Event::Warning { message } if message.contains("waiting up to 60 s for pod/app-0") && message.contains("not Ready")),
        "{waiting:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    ready("app-0", true);
    events::wait(&mut up, Duration::from_secs(20), |e| {
        matches!(e, Event::Ready { .. })
    });
    assert!(s.reaches(COOKIE, &app0));
    drop(up);
    s.wait_no_mappings(Duration::from_secs(2));

    // A StatefulSet with a replica that is not Ready: said, then bridged the moment it is.
    ready("app-1", false);
    let (mut up, bridged) = s.up(&["statefulset/app"]);
    assert_eq!(bridged.nodes.len(), 1);
    assert!(
        up.seen().iter().any(
            |l| matches!(events::parse(l), Some(Event::Warning { message })
            if message.contains("pod app-1") && message.contains("the moment it is Ready"))
        ),
        "{:?}",
        up.seen()
    );
    ready("app-1", true);
    let added = events::wait(&mut up, Duration::from_secs(10), |e| {
        matches!(e, Event::PodAdded { .. })
    });
    assert_eq!(events::pod(&added), Some("app-1"));
    assert!(s.reaches(COOKIE, &node(&s, "app-1")));
}

#[test]
fn a_command_follows_the_shells_conventions_and_keeps_its_streams() {
    let s = Scenario::start(MANIFEST, 61123);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let home = s.ws.home(&s.user).expect("home");
    let plain = home.join("not-executable");
    std::fs::write(&plain, "echo hi\n").expect("write");
    std::os::unix::fs::chown(&plain, Some(s.user.uid), Some(s.user.gid)).expect("chown");
    let plain = plain.display().to_string();
    for (cmd, code, said) in [
        (
            vec!["no-such-command"],
            127,
            "no-such-command: command not found",
        ),
        (vec![plain.as_str()], 126, "permission denied"),
        (vec!["sh", "-c", "kill -TERM $$"], 143, ""),
        (vec!["sh", "-c", "exit 7"], 7, ""),
    ] {
        let mut args = vec!["app-0", "--"];
        args.extend(cmd.iter().copied());
        let (got, out, err) = s.run(&s.user, "up", &args);
        assert_eq!(got, code, "{cmd:?}: {out}{err}");
        assert!(err.contains(said), "{cmd:?}: {err}");
        // The helper removes a session's rules as it sees the connection close.
        s.wait_no_mappings(Duration::from_secs(5));
    }

    // With --output json, CMD's stdout is CMD's alone; the events go to --events.
    let events_file = home.join("events.jsonl");
    let (code, out, err) = s.run(
        &s.user,
        "up",
        &[
            "app-0",
            "--output",
            "json",
            "--events",
            &events_file.display().to_string(),
            "--",
            "sh",
            "-c",
            "echo \"node $ERLBRIDGE_NODE\"",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("node {app0}\n"), "CMD's stdout untouched");
    let written = std::fs::read_to_string(&events_file).expect("events");
    let written = events::all(&written);
    assert!(
        matches!(written.first(), Some(Event::Ready { .. })),
        "{written:?}"
    );
    assert!(
        matches!(written.last(), Some(Event::Exited { code: 0 })),
        "{written:?}"
    );
}

#[test]
fn the_cookie_stays_out_of_ps_for_a_command_that_sets_it_itself() {
    let s = Scenario::start(MANIFEST, 61124);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    // The README's way: the cookie arrives in the environment (private to the user) and the
    // node sets it after start, so no command line holds it.
    let script = "N = list_to_atom(os:getenv(\"ERLBRIDGE_NODE\")), \
                  erlang:set_cookie(list_to_atom(os:getenv(\"ERLBRIDGE_COOKIE\"))), \
                  true = net_kernel:connect_node(N), \
                  io:format(\"answer ~p~n\", [rpc:call(N, erlang, node, [])]), \
                  timer:sleep(3000), halt(0).";
    let argv = s.erlbridge(
        "up",
        &[
            "app-0",
            "--",
            "erl",
            "-name",
            "ci@127.0.0.1",
            "-hidden",
            "-noshell",
            "-eval",
            script,
        ],
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut up = s.ws.spawn_as(&s.user, &argv).expect("erlbridge");
    up.wait_line(Duration::from_secs(30), |l| l.starts_with("answer"))
        .expect("the command reached the pod");
    let lines: Vec<String> =
        s.ws.ns
            .pids()
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .collect();
    assert!(
        lines.iter().any(|l| l.contains("ci@127.0.0.1")),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(COOKIE)),
        "the cookie is on a command line: {lines:?}"
    );
    assert_eq!(up.wait_exit(Duration::from_secs(20)).expect("ends"), 0);
}

#[test]
fn a_group_the_login_predates_gets_its_own_advice() {
    let s = Scenario::start(MANIFEST, 61125);
    assert!(!s.reaches(COOKIE, &node(&s, "app-0")), "the control");
    // The group database (in a private mount namespace) lists the user in the access group;
    // the process runs without it, as a login from before `usermod -aG` does.
    let etc = s.ws.scratch().join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    let uid = 61126;
    std::fs::write(
        etc.join("passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\nlate:x:{uid}:{uid}::/tmp:/bin/sh\n"),
    )
    .expect("passwd");
    std::fs::write(
        etc.join("group"),
        format!("root:x:0:\nlate:x:{uid}:\nebaccess:x:61000:late\n"),
    )
    .expect("group");
    let late = User::outsider(uid);
    let home = s.ws.home(&late).expect("home").display().to_string();
    let argv = s.erlbridge("up", &["app-0", "--mode", "nat"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let inner = late.wrap(&home, &argv).join(" ");
    let script = format!(
        "mount --bind {etc}/passwd /etc/passwd && mount --bind {etc}/group /etc/group && exec {inner}",
        etc = etc.display()
    );
    let out =
        s.ws.ns
            .command(&["unshare", "--mount", "sh", "-c", &script])
            .output()
            .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("you were added to group ebaccess, but this login started before that; log out and in again (or run `newgrp ebaccess`)"),
        "{err}"
    );
    events::assert_plain(&err);
    // Not in the group at all: the other advice.
    let (code, _, err) = s.run(&User::outsider(61127), "up", &["app-0", "--mode", "nat"]);
    assert_eq!(code, 7);
    assert!(
        err.contains("ask your administrator to add you to group"),
        "{err}"
    );
}

#[test]
fn errors_are_plain_sentences() {
    let s = Scenario::start(MANIFEST, 61128);
    assert!(!s.reaches(COOKIE, &node(&s, "app-0")), "the control");
    // A 503 from the API server.
    s.cluster
        .emulator
        .fail_requests(503, Duration::from_secs(5));
    let (code, _, err) = s.run(&s.user, "up", &["app-0"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(
            "the API server at https://172.31.255.1:6443 answered 503 Service Unavailable"
        ),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(5));
    // An API server that serves no access reviews: doctor could not ask, so it tries.
    s.cluster
        .emulator
        .set_access_reviews(AccessReviews::NotServed);
    let (code, out, err) = s.run(&s.user, "doctor", &["app-0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("could not ask which rights you have"), "{out}");
    assert!(!out.contains("not allowed"), "{out}");
    // A pod whose node is gone: nothing listens on its epmd port.
    let (code, _, err) = s.run(&s.user, "up", &["noepmd"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("pod noepmd has no epmd answering on port 4369: nothing listens there"),
        "{err}"
    );
    // A kubeconfig that is not there: its path once, plainly.
    let (code, _, err) = s.run(&s.user, "up", &["app-0", "--kubeconfig", "/nonexistent/kc"]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(err.matches("/nonexistent/kc").count(), 1, "{err}");
    assert!(!err.contains("'\""), "{err}");
}
