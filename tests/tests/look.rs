//! Looking inside a pod's node from the workstation: `erlbridge observer` (OTP's graphical
//! observer, in a virtual display, found by its window's title and photographed), `erlbridge
//! top` (etop in a real terminal) and `erlbridge eval` (one expression on every node). As an
//! unprivileged uid, after the control; the pod's node sees the hidden local node, the cookie
//! is on no command line, and the bridge ends with the command.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use erlbridge_testbed::display::{Display, variation};
use erlbridge_testbed::events::{self, Event};
use erlbridge_testbed::terminal::{assert_sane, wait_stty};
use erlbridge_testbed::{Scenario, Spawned, Terminal};

const COOKIE: &str = "l00k-inside";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "l00k-inside" }

[[pods]]
name = "bare-0"
labels = { app = "bare" }
env = { RELEASE_NODE = "bare@$(POD_IP)", RELEASE_COOKIE = "l00k-inside" }
# A release without runtime_tools, as `mix release` builds one unless asked.
args = ["-eval", "code:del_path(runtime_tools)"]

[[pods]]
name = "ex-0"
labels = { app = "ex" }
command = ["elixir"]
env = { RELEASE_NODE = "ex@$(POD_IP)", RELEASE_COOKIE = "l00k-inside" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    let alive = pod.split('-').next().unwrap_or(pod);
    format!("{alive}@{}", s.cluster.pod(pod).ip())
}

/// `erlbridge SUB ARGS` as the user with `env` set, started.
fn start(s: &Scenario, env: &[String], sub: &str, args: &[&str]) -> Spawned {
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(env.iter().cloned());
    argv.extend(s.erlbridge(sub, args));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = s.ws.command_as(&s.user, &argv).expect("command");
    cmd.current_dir(s.ws.home(&s.user).expect("home"));
    Spawned::start_capturing(cmd).expect("erlbridge")
}

/// Where the screenshots go (the README's picture is taken from here).
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots");
    dir
}

#[test]
fn observer_shows_the_pods_node_and_closing_it_ends_the_bridge() {
    let s = Scenario::start(MANIFEST, 61200);
    let display = Display::start(&s.ws, 300).expect("Xvfb");
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");

    // The control: observer started the plain way on a hidden node connected to the pod shows
    // the local node, on OTP 25.
    let (up, _) = s.up(&["app-0"]);
    let plain = format!(
        "true = net_kernel:connect_node('{app0}'), ok = observer:start(), timer:sleep(infinity)."
    );
    let argv = [
        "env",
        &display.env(),
        "erl",
        "-name",
        "plain@127.0.0.1",
        "-hidden",
        "-setcookie",
        COOKIE,
        "-noshell",
        "-eval",
        &plain,
    ];
    let control = s.ws.spawn_as(&s.user, &argv).expect("erl");
    let (_, title) = display
        .wait_window("plain@127.0.0.1", Duration::from_secs(60))
        .expect("the plain observer's window");
    assert_eq!(title, "plain@127.0.0.1", "titled by the local node");
    assert!(!title.contains(&app0));
    drop(control);
    drop(up);
    s.wait_no_mappings(Duration::from_secs(5));

    // erlbridge observer: the window and every tab are the pod's node's.
    let pod = s.cluster.pod("app-0");
    pod.eval(
        "{module, _} = code:ensure_loaded(observer_backend), \
         erlang:trace_pattern({observer_backend, '_', '_'}, true, [call_count])",
    )
    .expect("count the pod's observer_backend calls");
    let mut observer = start(&s, &[display.env()], "observer", &["app-0"]);
    let wanted = format!("Observer - {app0}");
    let (window, title) = display
        .wait_window(&wanted, Duration::from_secs(90))
        .expect("observer's window");
    assert_eq!(title, wanted);
    let said = observer.errors().join("\n");
    assert!(
        said.contains(&format!("OTP's observer for {app0}")),
        "{said}"
    );
    // The pod's node sees the hidden local node, and its observer_backend called from it.
    let hidden = pod.eval("nodes(hidden)").expect("nodes");
    assert!(hidden.contains("observer-"), "{hidden}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = pod
            .eval("erlang:trace_info({observer_backend, sys_info, 0}, call_count)")
            .expect("count");
        if count != "{call_count,0}" {
            break;
        }
        assert!(Instant::now() < deadline, "no sys_info call on the pod");
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = s.ws.command_lines();
    assert!(
        lines.iter().all(|l| !l.contains(COOKIE)),
        "the cookie is on a command line: {lines:?}"
    );
    let png = screenshots().join("observer.png");
    display.screenshot(&window, &png).expect("screenshot");
    let varies = variation(&png).expect("an image");
    assert!(varies > 0.05, "a blank screenshot ({varies})");
    eprintln!("observer's screenshot: {}", png.display());

    // Closing the window ends erlbridge, and its rules go.
    display.keys(&window, "ctrl+q").expect("close");
    assert_eq!(
        observer.wait_exit(Duration::from_secs(20)).expect("exits"),
        0
    );
    s.wait_no_mappings(Duration::from_secs(5));
    assert!(display.windows("Observer").is_empty());
    pod.eval("erlang:trace_pattern({observer_backend, '_', '_'}, false, [call_count])")
        .expect("stop counting");
}

/// `erlbridge top ARGS` in a terminal, through a shell that runs `prelude` first and, once
/// top ended, writes its exit code and `stty -a` to `ended`.
fn top_in_terminal(s: &Scenario, args: &[&str], ended: &Path, prelude: &str) -> Terminal {
    let top = s
        .erlbridge("top", args)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "{prelude}{top}; echo \"exit $?\" > {ended}; stty -a >> {ended}",
        ended = ended.display()
    );
    Terminal::start(&s.ws, &s.user, &[], &["sh".into(), "-c".into(), script])
}

#[test]
fn top_shows_the_busiest_process_without_tracing_and_q_leaves_a_sane_terminal() {
    let s = Scenario::start(MANIFEST, 61201);
    let app0 = node(&s, "app-0");
    assert!(!s.reaches(COOKIE, &app0), "the control");
    let pod = s.cluster.pod("app-0");
    pod.eval(
        "P = spawn(fun Spin() -> _ = lists:seq(1, 1000), Spin() end), \
         register(eb_busy, P), ok",
    )
    .expect("a busy process on the pod");
    let home = s.ws.home(&s.user).expect("home");
    let ended = home.join("top-ended.txt");
    let term = top_in_terminal(&s, &["app-0", "--interval", "1"], &ended, "");
    term.wait_for("eb_busy");
    // The last refresh on screen: the busy process heads the list.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = term.screen();
        let lines: Vec<&str> = screen.lines().collect();
        let first = lines
            .iter()
            .rposition(|l| l.starts_with("Pid") && l.contains("Name or Initial Func"))
            .and_then(|at| lines.get(at + 2));
        if first.is_some_and(|l| l.contains("eb_busy")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eb_busy is not at the top:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let screen = term.screen();
    assert!(screen.contains(&format!("'{app0}'")), "{screen}");
    eprintln!("top's screen:\n{screen}");
    // No tracer on the pod: etop's tracing is off.
    assert_eq!(pod.eval("whereis(dbg)").expect("dbg"), "undefined");
    assert_eq!(
        pod.eval("erlang:trace_info(new, flags)").expect("flags"),
        "{flags,[]}"
    );
    term.keys(&["q"]);
    let settings = wait_stty(&ended, Duration::from_secs(15), &term);
    assert!(settings.starts_with("exit 0"), "{settings}");
    assert_sane(&settings, "q");
    s.wait_no_mappings(Duration::from_secs(5));

    // A StatefulSet: one node, the one --pod names; Ctrl-C ends both, and the terminal is
    // sane again.
    let app1 = node(&s, "app-1");
    std::fs::remove_file(&ended).expect("rm");
    // (The shell goes on after an interrupted command only with a trap of its own.)
    let args = ["sts/app", "--pod", "app-1", "--sort", "memory"];
    let term = top_in_terminal(&s, &args, &ended, "trap true INT; ");
    term.wait_for(&format!("'{app1}'"));
    assert!(term.screen().contains("(pod app-1)"), "{}", term.screen());
    term.keys(&["C-c"]);
    let settings = wait_stty(&ended, Duration::from_secs(15), &term);
    assert!(settings.starts_with("exit 130"), "{settings}");
    assert_sane(&settings, "Ctrl-C");
    s.wait_no_mappings(Duration::from_secs(5));
}

#[test]
fn a_node_without_runtime_tools_or_a_host_without_a_display_gets_a_clear_stop() {
    let s = Scenario::start(MANIFEST, 61202);
    let bare = node(&s, "bare-0");
    assert!(!s.reaches(COOKIE, &bare), "the control");

    // No display: said before anything is bridged.
    let (code, _, err) = s.run(&s.user, "observer", &["app-0"]);
    assert_eq!(code, 12, "{err}");
    assert!(
        err.contains("no display") && err.contains("erlbridge top"),
        "{err}"
    );
    assert_eq!(s.mappings(), 0);

    // top draws on the terminal: no JSON of it.
    let (code, out, err) = s.run(&s.user, "top", &["app-0", "--output", "json"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        matches!(events::all(&out).as_slice(), [Event::Error { message, .. }] if message.contains("no --output json")),
        "{out}"
    );

    // A display that is set but gone: a clear failure, and no crash dump (it would hold the
    // cookie) where the user stands.
    let home = s.ws.home(&s.user).expect("home");
    let mut observer = start(&s, &["DISPLAY=:999".to_owned()], "observer", &["app-0"]);
    let code = observer.wait_exit(Duration::from_secs(60)).expect("exits");
    let err = observer.errors().join("\n");
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("could not open its window"), "{err}");
    assert!(
        !home.join("erl_crash.dump").exists(),
        "a crash dump in {home:?}"
    );
    s.wait_no_mappings(Duration::from_secs(5));

    // A node that cannot load runtime_tools: observer and top stop with the fix, no window.
    let display = Display::start(&s.ws, 302).expect("Xvfb");
    let mut observer = start(&s, &[display.env()], "observer", &["bare-0"]);
    let code = observer.wait_exit(Duration::from_secs(60)).expect("exits");
    let err = observer.errors().join("\n");
    assert_eq!(code, 11, "{err}");
    assert!(
        err.contains(&bare) && err.contains("runtime_tools") && err.contains("extra_applications"),
        "{err}"
    );
    assert!(display.windows("Observer").is_empty(), "no window opened");
    let (code, _, err) = s.run(&s.user, "top", &["bare-0"]);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("extra_applications"), "{err}");
    s.wait_no_mappings(Duration::from_secs(5));

    // eval needs none of it.
    let (code, out, err) = s.run(&s.user, "eval", &["bare-0", "node()"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("'{bare}'")), "{out}");

    // No observer here (its code taken off the local node's path): the package to install.
    let mut observer = start(
        &s,
        &[
            display.env(),
            "ERL_AFLAGS=-eval code:del_path(observer)".to_owned(),
        ],
        "observer",
        &["app-0"],
    );
    let code = observer.wait_exit(Duration::from_secs(60)).expect("exits");
    let err = observer.errors().join("\n");
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("apt install erlang-observer"), "{err}");
    assert!(display.windows("Observer").is_empty(), "no window opened");

    // --pod must name a pod of the target.
    let (code, _, err) = s.run(&s.user, "top", &["sts/app", "--pod", "app-9"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("app-0, app-1"), "{err}");
    s.wait_no_mappings(Duration::from_secs(5));
}

#[test]
fn eval_runs_on_every_node_and_says_which_raised_or_timed_out() {
    let s = Scenario::start(MANIFEST, 61203);
    let (app0, app1) = (node(&s, "app-0"), node(&s, "app-1"));
    assert!(!s.reaches(COOKIE, &app0), "the control");

    // Text: a block per node.
    let (code, out, err) = s.run(&s.user, "eval", &["sts/app", "node()"]);
    assert_eq!(code, 0, "{err}");
    for (pod, name) in [("app-0", &app0), ("app-1", &app1)] {
        assert!(
            out.contains(&format!("== {name} (pod {pod})\n'{name}'\n")),
            "{out}"
        );
    }
    // JSON: an event per node; -l works as TARGET does.
    let (code, out, err) = s.run(
        &s.user,
        "eval",
        &["-l", "app=app", "{node(), 1 + 1}", "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let results: Vec<(String, Option<String>, Option<String>)> = events::all(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::Eval {
                node,
                result,
                error,
                ..
            } => Some((node, result, error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        [
            (app0.clone(), Some(format!("{{'{app0}',2}}")), None),
            (app1.clone(), Some(format!("{{'{app1}',2}}")), None),
        ]
    );

    // One node raises: its error, the other's value, and the documented exit code.
    let raises = format!("case node() of '{app0}' -> erlang:error(boom); N -> N end");
    let (code, out, err) = s.run(&s.user, "eval", &["sts/app", &raises, "--output", "json"]);
    assert_eq!(code, 13, "{out}{err}");
    let by_node: Vec<Event> = events::all(&out);
    assert!(
        by_node.iter().any(
            |e| matches!(e, Event::Eval { node, error: Some(kind), message: Some(m), .. }
            if *node == app0 && kind == "raised" && m.contains("boom"))
        ),
        "{out}"
    );
    assert!(
        by_node.iter().any(
            |e| matches!(e, Event::Eval { node, result: Some(r), error: None, .. }
            if *node == app1 && *r == format!("'{app1}'"))
        ),
        "{out}"
    );

    // A node that does not answer in time, while the cookie stays off every command line.
    let mut slow = start(
        &s,
        &[],
        "eval",
        &["app-0", "timer:sleep(4000), late", "--timeout", "2s"],
    );
    // Once its local node runs (its name holds "eval-"), no command line holds the cookie.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = s.ws.command_lines();
        if lines
            .iter()
            .any(|l| l.contains("beam") && l.contains("eval-"))
        {
            break lines;
        }
        assert!(Instant::now() < deadline, "no local node: {lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        lines.iter().all(|l| !l.contains(COOKIE)),
        "the cookie is on a command line: {lines:?}"
    );
    assert_eq!(slow.wait_exit(Duration::from_secs(30)).expect("exits"), 13);
    let said = slow.lines_for(Duration::from_millis(500)).join("\n");
    assert!(
        said.contains(&format!(
            "== {app0} (pod app-0)\n** timeout: no answer within 2000 ms"
        )),
        "{said}"
    );

    // Elixir, on a node that runs it; bad input is said plainly.
    let ex = node(&s, "ex-0");
    let (code, out, err) = s.run(
        &s.user,
        "eval",
        &["ex-0", "--elixir", "Enum.sum([1, 2, 3])"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("== {ex} (pod ex-0)\n6")), "{out}");
    let (code, _, err) = s.run(&s.user, "eval", &["app-0", "1 +"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the expression is not Erlang"), "{err}");
    s.wait_no_mappings(Duration::from_secs(5));
}
