//! The no-helper mode end to end: no erlbridge-helperd, no nftables table, nothing privileged
//! on the workstation; erlbridge and every local node (erl and Elixir) as an unprivileged uid.
//! Local nodes reach the pods through erlbridge's epmd module only. Every scenario first shows
//! that without it the local node cannot reach the pod.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use erlbridge_testbed::events::{self, Event, Mode, Ready};
use erlbridge_testbed::{Scenario, Terminal};
use nix::sys::signal::Signal;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 3
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }

[[pods]]
name = "dns-0"
hostname = "dns-0"
subdomain = "dns"
labels = { app = "dns" }
env = { RELEASE_NODE = "dns@$(POD_NAME).dns.$(POD_NAMESPACE).svc.cluster.local", RELEASE_COOKIE = "monster" }

[[pods]]
name = "ex-0"
labels = { app = "ex" }
command = ["elixir"]
env = { RELEASE_NODE = "ex@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    format!("app@{}", s.cluster.pod(pod).ip())
}

/// The epmd module's flags from the ready event, as erl arguments.
fn flags(ready: &Ready) -> Vec<String> {
    assert!(ready.erl_flags.is_some(), "epmd mode has flags: {ready:?}");
    ready.flags()
}

/// The runtime directory (`-pa DIR`) the flags name.
fn runtime_dir(ready: &Ready) -> PathBuf {
    let flags = flags(ready);
    let at = flags.iter().position(|f| f == "-pa").expect("-pa");
    PathBuf::from(&flags[at + 1])
}

fn connect_and_call(node: &str) -> String {
    format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}")
}

fn no_helper_anywhere(s: &Scenario) {
    assert!(s.helperd.is_none());
    assert_eq!(
        s.ws.helper_table(),
        None,
        "no nftables table on the workstation"
    );
}

#[test]
fn a_pod_and_a_statefulset_are_reached_through_the_epmd_module_alone() {
    let s = Scenario::start_without_helper(MANIFEST, 61070);
    no_helper_anywhere(&s);
    let app0 = node(&s, "app-0");
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{app0}')"), &[]),
        "false",
        "the control"
    );

    let (mut up, ready) = s.up(&["app-0"]);
    assert_eq!(ready.mode, Mode::Epmd, "auto without a helper");
    let fallback = up.seen().join("\n");
    assert!(fallback.contains("mode epmd"), "{fallback}");
    let with: Vec<String> = flags(&ready);
    let with: Vec<&str> = with.iter().map(String::as_str).collect();
    assert!(
        with.contains(&"-epmd_module") && with.contains(&"-hidden"),
        "{with:?}"
    );
    assert_eq!(
        s.local(COOKIE, &connect_and_call(&app0), &with),
        format!("{{true,'{app0}'}}")
    );
    // A node started without the flags sees what it saw before erlbridge.
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{app0}')"), &[]),
        "false",
        "without the flags"
    );
    no_helper_anywhere(&s);
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_exit(Duration::from_secs(5)).expect("exits"), 0);
    assert!(
        !runtime_dir(&ready).exists(),
        "the runtime directory goes at exit"
    );

    // A StatefulSet: one hidden local node reaches all three, and the pods keep their peers.
    let names: Vec<String> = ["app-0", "app-1", "app-2"]
        .iter()
        .map(|p| node(&s, p))
        .collect();
    let (_up, ready) = s.up(&["statefulset/app", "--mode", "epmd"]);
    assert_eq!(ready.nodes.len(), 3);
    let with: Vec<String> = flags(&ready);
    let with: Vec<&str> = with.iter().map(String::as_str).collect();
    let all = names
        .iter()
        .map(|n| connect_and_call(n))
        .collect::<Vec<_>>()
        .join(", ");
    let result = s.local(COOKIE, &format!("[{all}]"), &with);
    for n in &names {
        assert!(
            result.contains(&format!("{{true,'{n}'}}")),
            "{n} in {result}"
        );
    }
    s.assert_peers_intact(&["app-0", "app-1", "app-2"], "while bridged");
}

#[test]
fn dns_named_nodes_and_commands_need_nothing_else() {
    let s = Scenario::start_without_helper(MANIFEST, 61071);
    let dns = "dns@dns-0.dns.default.svc.cluster.local";
    assert_eq!(
        s.local(COOKIE, &format!("net_kernel:connect_node('{dns}')"), &[]),
        "false",
        "the control"
    );
    let (up, ready) = s.up(&["dns-0"]);
    assert_eq!(
        (ready.mode, ready.inetrc.as_ref()),
        (Mode::Epmd, None),
        "no ERL_INETRC in this mode"
    );
    let with: Vec<String> = flags(&ready);
    let with: Vec<&str> = with.iter().map(String::as_str).collect();
    assert_eq!(
        s.local(COOKIE, &connect_and_call(dns), &with),
        format!("{{true,'{dns}'}}")
    );
    drop(up);

    // -- CMD gets the flags in ERL_AFLAGS (after the user's own) and ends with its exit code.
    let app0 = node(&s, "app-0");
    let script = "N = list_to_atom(os:getenv(\"ERLBRIDGE_NODE\")), true = net_kernel:connect_node(N), \
                  io:format(\"answer ~p ~s~n\", [rpc:call(N, erlang, node, []), os:getenv(\"ERL_AFLAGS\")]), halt(3).";
    let (code, out, err) = s.run(
        &s.user,
        "up",
        &[
            "app-0",
            "--",
            "erl",
            "-name",
            "ci@127.0.0.1",
            "-setcookie",
            COOKIE,
            "-noshell",
            "-eval",
            script,
        ],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains(&format!("answer '{app0}' ")), "{out}{err}");
    assert!(out.contains("-epmd_module erlbridge_epmd -hidden"), "{out}");
    assert!(err.contains("using mode epmd"), "{err}");
    // Text mode tells a person the flags and the limits.
    let (code, _, text) = s.run(&s.user, "up", &["app-0", "--", "true"]);
    assert_eq!(code, 0);
    for said in [
        "mode epmd",
        "export ERL_AFLAGS=\"-pa ",
        "-epmd_module erlbridge_epmd",
        "iex --erl \"-pa ",
        "already running without these flags cannot reach the pods",
        "Keep local nodes hidden",
    ] {
        assert!(text.contains(said), "{said:?} not in:\n{text}");
    }
}

#[test]
fn a_running_local_node_follows_a_pod_back_at_a_new_ip() {
    let mut s = Scenario::start_without_helper(MANIFEST, 61072);
    let (mut up, ready) = s.up(&["statefulset/app"]);
    let with: Vec<String> = flags(&ready);
    // A local node that stays up across the restart.
    let mut argv: Vec<String> = [
        "erl",
        "-name",
        "keeper@127.0.0.1",
        "-setcookie",
        COOKIE,
        "-noshell",
        "-noinput",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    argv.extend(with.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _keeper = s.ws.spawn_as(&s.user, &argv).expect("keeper");
    let on_keeper = |s: &Scenario, expr: &str| {
        let with: Vec<&str> = with.iter().map(String::as_str).collect();
        let call = format!("erpc:call('keeper@127.0.0.1', fun() -> {expr} end)");
        // Not up yet, or the pod not reachable yet: an error, tried again by the callers.
        s.ws.erl_eval(&s.user, COOKIE, &call, &with)
            .unwrap_or_else(|e| e.to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_keeper(&s, "ok") != "ok" {
        assert!(Instant::now() < deadline, "the keeper node did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let old = node(&s, "app-1");
    assert_eq!(
        on_keeper(&s, &format!("net_kernel:connect_node('{old}')")),
        "true"
    );

    s.cluster.restart_pod_with_new_ip("app-1").expect("restart");
    let started = Instant::now();
    events::wait(&mut up, Duration::from_secs(10), |e| {
        matches!(e, Event::PodChanged { .. })
    });
    let new = node(&s, "app-1");
    assert_ne!(old, new);
    let call = format!("{{net_kernel:connect_node('{new}'), rpc:call('{new}', erlang, node, [])}}");
    while on_keeper(&s, &call) != format!("{{true,'{new}'}}") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the running node did not reach {new} within 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn auto_picks_nat_with_the_helper_and_epmd_never_asks_it() {
    let mut s = Scenario::start(MANIFEST, 61073);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let (up, ready) = s.up(&["app-0"]);
    assert_eq!((ready.mode, ready.erl_flags.as_ref()), (Mode::Nat, None));
    assert!(s.reaches(COOKIE, &app0), "nat works for any local node");
    drop(up);
    s.wait_no_mappings(Duration::from_secs(2));

    // --mode epmd never contacts the helper, though it runs.
    let (_up, ready) = s.up(&["app-0", "--mode", "epmd"]);
    assert_eq!(ready.mode, Mode::Epmd);
    assert_eq!(s.mappings(), 0);
    let argv = s.erlbridge("status", &[]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let root = s.ws.ns.run(&argv).expect("status as root");
    assert!(root.contains("no live sessions"), "{root}");
    assert!(
        !s.reaches(COOKIE, &app0),
        "no redirect: a node without the flags"
    );
    let with: Vec<String> = flags(&ready);
    let with: Vec<&str> = with.iter().map(String::as_str).collect();
    assert_eq!(
        s.local(COOKIE, &connect_and_call(&app0), &with),
        format!("{{true,'{app0}'}}")
    );

    // The helper gone, auto falls back to epmd and says why.
    s.helper().stop(Signal::SIGTERM).expect("stop");
    let (code, out, err) = s.run(&s.user, "up", &["app-0", "--output", "json", "--", "true"]);
    assert_eq!(code, 0, "{out}{err}");
    // With -- CMD, erlbridge's events go to stderr: CMD's stdout is CMD's.
    let said = events::all(&err);
    assert!(
        said.iter().any(|e| matches!(e, Event::Warning { message } if message.contains("using mode epmd") && message.contains("not reachable"))),
        "{out}"
    );
    assert!(
        said.iter().any(|e| matches!(
            e,
            Event::Ready {
                mode: Mode::Epmd,
                ..
            }
        )),
        "{out}"
    );
    // And --mode nat insists on the helper.
    let (code, _, err) = s.run(&s.user, "up", &["app-0", "--mode", "nat"]);
    assert_eq!(code, 7, "{err}");
}

#[test]
fn kill_9_leaves_a_runtime_directory_the_next_start_removes_and_bad_input_is_clear() {
    let s = Scenario::start_without_helper(MANIFEST, 61074);
    assert!(!s.reaches(COOKIE, &node(&s, "app-0")), "the control");
    let (up, first) = s.up(&["app-0"]);
    let dir = runtime_dir(&first);
    assert!(dir.join("erlbridge_epmd.beam").exists() && dir.join("nodes.eterm").exists());
    up.signal(Signal::SIGKILL);
    let mut up = up;
    up.wait_exit(Duration::from_secs(5)).expect("killed");
    assert!(dir.exists(), "kill -9 leaves it");
    let (_up, second) = s.up(&["app-0"]);
    assert_ne!(runtime_dir(&second), dir);
    assert!(!dir.exists(), "the next start removed it");

    // XDG_RUNTIME_DIR unusable: the next place (the home's cache) is taken.
    let argv = s.erlbridge("up", &["app-0", "--", "sh", "-c", "echo \"$ERL_AFLAGS\""]);
    let mut with_env: Vec<&str> = vec!["env", "XDG_RUNTIME_DIR=/proc/erlbridge-none"];
    with_env.extend(argv.iter().map(String::as_str));
    let (code, out, err) = s.ws.run_as(&s.user, &with_env).expect("run");
    assert_eq!(code, 0, "{err}");
    let home = s.ws.home(&s.user).expect("home");
    assert!(
        out.contains(&home.join(".cache/erlbridge/run").display().to_string()),
        "{out}"
    );

    // No place at all: a clear message that names each, nothing started.
    let mut with_env: Vec<&str> = vec![
        "env",
        "XDG_RUNTIME_DIR=/proc/erlbridge-none",
        "HOME=/proc/erlbridge-none",
        "TMPDIR=/proc/erlbridge-none",
    ];
    with_env.extend(argv.iter().map(String::as_str));
    let (code, _, err) = s.ws.run_as(&s.user, &with_env).expect("run");
    assert_eq!(code, 1, "{err}");
    for place in [
        "/proc/erlbridge-none/erlbridge",
        "/proc/erlbridge-none/.cache/erlbridge/run",
        &format!("/proc/erlbridge-none/erlbridge-{}", s.user.uid),
    ] {
        assert!(err.contains(place), "{place}: {err}");
    }
    assert!(err.contains("set XDG_RUNTIME_DIR (or TMPDIR)"), "{err}");

    // remsh with no Erlang on PATH: a clear message.
    let argv = s.erlbridge("remsh", &["app-0"]);
    let mut with_env: Vec<&str> = vec!["env", "PATH=/nonexistent"];
    with_env.extend(argv.iter().map(String::as_str));
    let (code, _, err) = s.ws.run_as(&s.user, &with_env).expect("run");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("neither iex nor erl is on PATH"), "{err}");
}

#[test]
fn remsh_and_iex_reach_the_pod_and_leaving_the_shell_spares_the_pod_node() {
    let s = Scenario::start_without_helper(MANIFEST, 61075);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");

    // erlbridge remsh (erl), left the harmless way.
    let argv = s.erlbridge("remsh", &["app-0", "--erl"]);
    let term = Terminal::start(&s.ws, &s.user, &[], &argv);
    term.wait_for("stop the POD's node");
    term.wait_for(&format!("({app0})1>"));
    term.line("node().");
    term.wait_for(&format!("'{app0}'"));
    term.keys(&["C-g"]);
    term.line("q");
    term.wait_end(Duration::from_secs(10));
    assert_eq!(
        s.cluster
            .pod("app-0")
            .eval("node()")
            .expect("the pod node lives on"),
        format!("'{app0}'")
    );

    // Elixir as a real client, with the flags erlbridge printed, on a pod running Elixir.
    let ex0 = format!("ex@{}", s.cluster.pod("ex-0").ip());
    let (_up, ready) = s.up(&["ex-0"]);
    let flags = ready.erl_flags.clone().expect("flags");
    let iex = |args: &[&str]| -> Vec<String> {
        ["iex", "--erl", &flags]
            .iter()
            .chain(args)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let remote = Terminal::start(
        &s.ws,
        &s.user,
        &[],
        &iex(&[
            "--name",
            "ex1@127.0.0.1",
            "--cookie",
            COOKIE,
            "--hidden",
            "--remsh",
            &ex0,
        ]),
    );
    remote.wait_for(&format!("iex({ex0})1>"));
    remote.line("node()");
    remote.wait_for(&format!(":\"{ex0}\""));
    drop(remote);

    let local = Terminal::start(
        &s.ws,
        &s.user,
        &[],
        &iex(&["--name", "ex2@127.0.0.1", "--cookie", COOKIE, "--hidden"]),
    );
    local.wait_for("iex(ex2@127.0.0.1)1>");
    local.line(&format!("Node.connect(:\"{ex0}\")"));
    local.wait_for("true");
    local.line(&format!(":rpc.call(:\"{ex0}\", :erlang, :node, [])"));
    local.wait_for(&format!(":\"{ex0}\""));
}

#[test]
fn the_shipped_module_answers_as_a_fresh_compile_of_its_source() {
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../client/erlang/erlbridge_epmd.erl");
    let map = "{\"app\", \"10.244.1.8\", 40123, 6}.\n\
               {\"app\", \"App-0.App.Default.svc.cluster.local\", 40124, 6}.\n";
    let asked = "[erlbridge_epmd:address_please(\"app\", \"10.244.1.8\", inet), \
                 erlbridge_epmd:address_please(\"app\", \"app-0.app.default.svc.cluster.local\", inet6), \
                 erlbridge_epmd:address_please(\"other\", \"localhost\", inet), \
                 lists:sort(erlbridge_epmd:module_info(exports)) -- [{module_info,0},{module_info,1}], \
                 filename:basename(filename:dirname(code:which(erlbridge_epmd)))]";
    let answer = |dir: &std::path::Path| {
        std::fs::write(dir.join("nodes.eterm"), map).expect("map");
        let out = std::process::Command::new("erl")
            .args(["-noshell", "-pa"])
            .arg(dir)
            .args([
                "-eval",
                &format!("io:format(\"~0p~n\", [{asked}]), halt()."),
            ])
            .output()
            .expect("erl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let shipped = tempfile::Builder::new()
        .prefix("shipped")
        .tempdir()
        .expect("dir");
    std::fs::write(
        shipped.path().join("erlbridge_epmd.beam"),
        erlbridge::reach::EPMD_MODULE_BEAM,
    )
    .expect("beam");
    let fresh = tempfile::Builder::new()
        .prefix("fresh")
        .tempdir()
        .expect("dir");
    let compiled = std::process::Command::new("erlc")
        .arg("-o")
        .arg(fresh.path())
        .arg(&source)
        .output()
        .expect("erlc");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );

    let from_shipped = answer(shipped.path());
    let from_fresh = answer(fresh.path());
    let expected_prefix = "[{ok,{127,0,0,1},40123,6},{ok,{0,0,0,0,0,0,0,1},40124,6},{ok,{127,0,0,1}},\
                           [{address_please,3},{listen_port_please,2},{names,0},{names,1},\
                           {port_please,2},{port_please,3},{register_node,2},{register_node,3},\
                           {start_link,0}],";
    assert!(from_shipped.starts_with(expected_prefix), "{from_shipped}");
    assert_eq!(
        from_shipped.replace(&file_name(shipped.path()), "DIR"),
        from_fresh.replace(&file_name(fresh.path()), "DIR"),
        "the shipped module and a fresh compile answer alike"
    );
}

fn file_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}
