//! Cookies and remote shells: a cookie read from a Secret reaches `-- CMD` and never the JSON
//! output or logs; `--cookie-file` is private; `erlbridge remsh` attaches a real shell in a
//! terminal (tmux) to the pod node. Helper as root, the rest as an unprivileged uid.

use std::time::Duration;

use erlbridge_testbed::{Scenario, Terminal};

const COOKIE: &str = "s3cr3t-c00kie";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 1
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "s3cr3t-c00kie" }

[[pods]]
name = "quiet"
labels = { app = "quiet" }
env = { RELEASE_NODE = "quiet@$(POD_IP)", RELEASE_COOKIE = "s3cr3t-c00kie", SOME_OTHER = "x" }

[[secrets]]
name = "app-cookie"
data = { cookie = "s3cr3t-c00kie" }

[[secrets]]
name = "two-keys"
data = { a = "1", b = "2" }
"#;

#[test]
fn a_secrets_cookie_reaches_the_command_and_never_the_output() {
    let s = Scenario::start(MANIFEST, 61040);
    let node = format!("app@{}", s.cluster.pod("app-0").ip());
    assert!(!s.reaches(COOKIE, &node), "the control");
    let script = "C = list_to_atom(os:getenv(\"ERLBRIDGE_COOKIE\")), erlang:set_cookie(C), \
                  N = list_to_atom(os:getenv(\"ERLBRIDGE_NODE\")), \
                  io:format(\"answer ~p~n\", [{net_kernel:connect_node(N), rpc:call(N, erlang, node, [])}]), halt(0).";
    let cookie_file = s.ws.home(&s.user).expect("home").join("cookie");
    let cookie_file_s = cookie_file.display().to_string();
    let (code, out, err) = s.run(
        &s.user,
        "up",
        &[
            "app-0",
            "--cookie-from",
            "secret/app-cookie",
            "--cookie-file",
            &cookie_file_s,
            "--output",
            "json",
            "-vv",
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
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("answer {{true,'{node}'}}")),
        "{out}{err}"
    );
    let json_and_logs: String = out
        .lines()
        .filter(|l| !l.starts_with("answer"))
        .chain(err.lines())
        .collect();
    assert!(
        !json_and_logs.contains(COOKIE),
        "the cookie leaked into the output or logs:\n{json_and_logs}"
    );
    assert!(
        erlbridge_testbed::events::all(&err)
            .iter()
            .any(|e| matches!(e, erlbridge_testbed::events::Event::Ready { .. })),
        "erlbridge's events go to stderr while CMD runs: {err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&cookie_file).expect("cookie file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&cookie_file).expect("read"), COOKIE);
    s.wait_no_mappings(Duration::from_secs(5));

    // Text mode shows it only when asked.
    let (_, _, shown) = s.run(
        &s.user,
        "up",
        &[
            "app-0",
            "--cookie-from",
            "env",
            "--show-cookie",
            "--",
            "true",
        ],
    );
    assert!(
        shown.contains(&format!("-setcookie {COOKIE} -hidden -remsh {node}")),
        "{shown}"
    );
    let (_, _, hidden) = s.run(
        &s.user,
        "up",
        &["app-0", "--cookie-from", "env", "--", "true"],
    );
    assert!(
        !hidden.contains(COOKIE) && hidden.contains("\"$COOKIE\""),
        "{hidden}"
    );

    // Sources that do not hold a cookie.
    for (source, message) in [
        ("secret/nope", "secret nope not found"),
        ("secret/two-keys", "say which one holds the cookie"),
        ("secret/app-cookie:nokey", "has no key \"nokey\""),
        ("env:MISSING", "sets MISSING"),
    ] {
        let (code, out, err) = s.run(&s.user, "up", &["app-0", "--cookie-from", source]);
        assert_eq!(code, 3, "{source}: {out}{err}");
        assert!(err.contains(message), "{source}: {err}");
        assert_eq!(s.mappings(), 0);
    }
    let (code, _, err) = s.run(&s.user, "up", &["app-0", "--cookie-from", "configmap/x"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn remsh_attaches_a_shell_in_a_terminal_and_ends_with_it() {
    let s = Scenario::start(MANIFEST, 61040);
    let node = format!("app@{}", s.cluster.pod("app-0").ip());
    assert!(!s.reaches(COOKIE, &node), "the control");
    let argv = s.erlbridge(
        "remsh",
        &["app-0", "--erl", "--cookie-from", "secret/app-cookie"],
    );
    let term = Terminal::start(&s.ws, &s.user, &[], &argv);
    let prompt = format!("({node})1>");
    term.wait_for(&prompt);
    term.line("node().");
    term.wait_for(&format!("'{node}'"));
    assert_eq!(s.mappings(), 2, "bridged while the shell runs");
    // Quit the local shell only (the BREAK menu's q), never the pod node.
    term.keys(&["C-g"]);
    term.line("q");
    term.wait_end(Duration::from_secs(10));
    s.wait_no_mappings(Duration::from_secs(2));
    assert_eq!(
        s.cluster
            .pod("app-0")
            .eval("node()")
            .expect("the pod node lives on"),
        format!("'{node}'")
    );
}
