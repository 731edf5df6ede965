//! Cookies and remote shells: a cookie read from a Secret reaches `-- CMD` and never the JSON
//! output or logs; `--cookie-file` is private; `erlbridge remsh` attaches a real shell in a
//! terminal (tmux) to the pod node. Helper as root, the rest as an unprivileged uid.

use std::time::{Duration, Instant};

use erlbridge_testbed::Scenario;

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
        matches!(
            erlbridge_testbed::events::all(&out).first(),
            Some(erlbridge_testbed::events::Event::Ready { .. })
        ),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&cookie_file).expect("cookie file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&cookie_file).expect("read"), COOKIE);
    assert_eq!(s.mappings(), 0);

    // Text mode shows it only when asked.
    let (_, shown, _) = s.run(
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
    let (_, hidden, _) = s.run(
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
    let home = s.ws.home(&s.user).expect("home").display().to_string();
    let mut wrapped = s.user.wrap(&home, &[]);
    wrapped.insert(wrapped.len(), "TERM=xterm".to_owned());
    let argv = s.erlbridge(
        "remsh",
        &["app-0", "--erl", "--cookie-from", "secret/app-cookie"],
    );
    let command = ["ip", "netns", "exec", s.ws.ns.name()]
        .iter()
        .map(|a| (*a).to_owned())
        .chain(wrapped)
        .chain(argv)
        .collect::<Vec<_>>()
        .join(" ");
    let session = format!("eb-remsh-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux")
    };
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !screen().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{what:?} never showed; screen:\n{}",
                screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "200",
            "-y",
            "50",
            &command
        ])
        .status
        .success()
    );
    let prompt = format!("({node})1>");
    wait_for(&prompt);
    tmux(&["send-keys", "-t", &session, "node().", "Enter"]);
    wait_for(&format!("'{node}'"));
    assert_eq!(s.mappings(), 2, "bridged while the shell runs");
    // Quit the local shell only (the BREAK menu's q), never the pod node.
    tmux(&["send-keys", "-t", &session, "C-g"]);
    tmux(&["send-keys", "-t", &session, "q", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux(&["has-session", "-t", &session]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the shell did not end; screen:\n{}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.mappings() > 0 {
        assert!(
            Instant::now() < deadline,
            "rules left after the shell ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        s.cluster
            .pod("app-0")
            .eval("node()")
            .expect("the pod node lives on"),
        format!("'{node}'")
    );
}
