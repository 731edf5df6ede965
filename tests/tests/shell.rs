//! `erlbridge remsh` as a person meets it, in a real terminal (tmux): the shell that fits the
//! pod's node, no cookie on any command line, the terminal sane however the shell ends, and a
//! second shell or bridge for a pod another erlbridge of the user already bridges. Helper as
//! root, the rest as an unprivileged uid.

use std::time::Duration;

use erlbridge_testbed::terminal::{assert_sane, wait_stty};
use erlbridge_testbed::{Scenario, Terminal};
use nix::sys::signal::Signal;

const COOKIE: &str = "k33p-0ut-of-ps";
const MANIFEST: &str = r#"
[[pods]]
name = "erl-0"
labels = { app = "erl" }
env = { RELEASE_NODE = "erl@$(POD_IP)", RELEASE_COOKIE = "k33p-0ut-of-ps" }

[[pods]]
name = "ex-0"
labels = { app = "ex" }
command = ["elixir"]
env = { RELEASE_NODE = "ex@$(POD_IP)", RELEASE_COOKIE = "k33p-0ut-of-ps" }
"#;

fn node(s: &Scenario, pod: &str) -> String {
    let alive = pod.trim_end_matches("-0");
    format!("{alive}@{}", s.cluster.pod(pod).ip())
}

/// The pid of the workstation's process whose program name ends with `program` and whose
/// arguments hold every one of `words`.
fn pid_of(s: &Scenario, program: &str, words: &[&str]) -> i32 {
    s.ws.ns
        .pids()
        .into_iter()
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            argv.first().is_some_and(|a| a.ends_with(program))
                && words.iter().all(|w| argv.iter().any(|a| a.contains(w)))
        })
        .unwrap_or_else(|| panic!("no process {program} with {words:?}"))
}

#[test]
fn remsh_picks_the_shell_the_pod_runs_and_keeps_the_cookie_off_every_command_line() {
    let s = Scenario::start(MANIFEST, 61110);
    let erl = node(&s, "erl-0");
    assert!(!s.reaches(COOKIE, &erl), "the control");

    // A plain Erlang pod: erl -remsh, though iex is installed here.
    let argv = s.erlbridge("remsh", &["erl-0"]);
    let term = Terminal::start(&s.ws, &s.user, &[], &argv);
    term.wait_for(&format!("({erl})1>"));
    let screen = term.screen();
    assert!(
        screen.contains(&format!("attaching erl to {erl}")),
        "{screen}"
    );
    assert!(
        !screen.contains("Ctrl-C ends the bridge"),
        "up's line is not remsh's: {screen}"
    );
    assert!(screen.contains("stop the POD's node"), "{screen}");
    let lines = s.ws.command_lines();
    assert!(lines.iter().any(|l| l.contains("beam")), "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains(COOKIE)),
        "the cookie is on a command line: {lines:?}"
    );
    term.line("node().");
    term.wait_for(&format!("'{erl}'"));
    term.keys(&["C-g"]);
    term.line("q");
    term.wait_end(Duration::from_secs(10));
    s.wait_no_mappings(Duration::from_secs(2));

    // An Elixir pod: iex --remsh.
    let ex = node(&s, "ex-0");
    let argv = s.erlbridge("remsh", &["ex-0"]);
    let term = Terminal::start(&s.ws, &s.user, &[], &argv);
    term.wait_for(&format!("iex({ex})1>"));
    assert!(term.screen().contains(&format!("attaching iex to {ex}")));
    let lines = s.ws.command_lines();
    assert!(
        lines.iter().all(|l| !l.contains(COOKIE)),
        "the cookie is on a command line: {lines:?}"
    );
    term.line("System.version() |> is_binary()");
    term.wait_for("true");
}

#[test]
fn the_terminal_is_sane_however_remsh_ends() {
    let s = Scenario::start(MANIFEST, 61111);
    let erl = node(&s, "erl-0");
    assert!(!s.reaches(COOKIE, &erl), "the control");
    let home = s.ws.home(&s.user).expect("home");
    for (case, end) in [
        ("sigterm", Signal::SIGTERM),
        ("sighup", Signal::SIGHUP),
        ("node-killed", Signal::SIGKILL),
    ] {
        let stty = home.join(format!("stty-{case}.txt"));
        let remsh = s.erlbridge("remsh", &["erl-0", "--erl"]).join(" ");
        let script = format!("{remsh}; stty -a > {}", stty.display());
        let term = Terminal::start(&s.ws, &s.user, &[], &["sh".into(), "-c".into(), script]);
        term.wait_for(&format!("({erl})1>"));
        let victim = if end == Signal::SIGKILL {
            // The local node dies under the shell.
            pid_of(&s, "beam.smp", &["remsh-"])
        } else {
            pid_of(&s, "/erlbridge", &["remsh"])
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), end).expect("signal");
        let settings = wait_stty(&stty, Duration::from_secs(15), &term);
        assert_sane(&settings, case);
        s.wait_no_mappings(Duration::from_secs(2));
    }
}

#[test]
fn a_second_shell_or_bridge_for_a_bridged_pod_works_beside_the_first() {
    let s = Scenario::start(MANIFEST, 61112);
    let erl = node(&s, "erl-0");
    assert!(!s.reaches(COOKIE, &erl), "the control");
    let (up, _) = s.up(&["erl-0"]);
    assert!(s.reaches(COOKIE, &erl));

    // Two shells at once, beside the running bridge: each says why it takes the epmd mode.
    let argv = s.erlbridge("remsh", &["erl-0", "--erl"]);
    let first = Terminal::start(&s.ws, &s.user, &[], &argv);
    let second = Terminal::start(&s.ws, &s.user, &[], &argv);
    for term in [&first, &second] {
        term.wait_for(&format!("({erl})1>"));
        let screen = term.screen();
        assert!(
            screen.contains(&format!(
                "already bridged for you by erlbridge pid {}",
                up.pid()
            )),
            "{screen}"
        );
    }
    first.line("node().");
    first.wait_for(&format!("'{erl}'"));
    drop(first);
    drop(second);
    assert!(s.reaches(COOKIE, &erl), "the first bridge still works");

    // --mode nat cannot share: it names the process and what to do.
    let (code, _, err) = s.run(&s.user, "up", &["erl-0", "--mode", "nat"]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains(&format!(
            "already bridged for you by erlbridge pid {}",
            up.pid()
        )) && err.contains("--mode epmd"),
        "{err}"
    );

    // --node-host dns on a pod whose node is named by its IP: no false name.
    let (code, _, err) = s.run(&s.user, "up", &["erl-0", "--node-host", "dns"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("named by its IP"), "{err}");
}
