//! The standing test bed (`testbed up|status|down`, what `scripts/testbed` runs): it comes up
//! in the background, says where everything is and how to use it, refuses a second `up`, and
//! `down` removes everything, also after its server was killed. Needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use erlbridge_testbed::require_root;
use erlbridge_testbed::standing::{self, Attached, State};

const TESTBED: &str = env!("CARGO_BIN_EXE_testbed");

/// `testbed SUB --state-dir DIR`: (exit code, stdout, stderr).
fn testbed(dir: &Path, sub: &str) -> (i32, String, String) {
    let out = Command::new(TESTBED)
        .args([sub, "--state-dir"])
        .arg(dir)
        .output()
        .expect("testbed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether anything the test bed of `state` made is still there.
fn leftovers(state: &State) -> Vec<String> {
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut left: Vec<String> = state
        .namespaces
        .iter()
        .filter(|n| {
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n))
        })
        .cloned()
        .collect();
    left.extend(
        state
            .paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string()),
    );
    if standing::alive(state.pid) {
        left.push(format!("pid {}", state.pid));
    }
    left
}

/// A state directory of the test's own, so a standing test bed someone keeps up is left alone.
fn state_dir() -> tempfile::TempDir {
    require_root();
    tempfile::Builder::new()
        .prefix("eb-standing-")
        .tempdir()
        .expect("dir")
}

#[test]
fn up_prints_how_to_use_it_a_second_up_refuses_and_down_removes_everything() {
    let holder = state_dir();
    let dir = holder.path().join("state");
    assert_eq!(testbed(&dir, "status").0, 1);
    let (code, out, _) = testbed(&dir, "down");
    assert_eq!(
        (code, out.trim()),
        (0, "The test bed is not up: nothing to remove.")
    );

    let (code, out, err) = testbed(&dir, "up");
    assert_eq!(code, 0, "{out}{err}");
    let bed = Attached::load(&dir).expect("attach");
    let state = bed.state.clone();
    for needle in [
        state.kubeconfig.display().to_string(),
        state.helper_socket.display().to_string(),
        state.workstation.clone(),
        format!("--reuid={}", state.user.uid),
        "erlbridge up statefulset/app --kubeconfig".to_owned(),
        "cookie        monster".to_owned(),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing from:\n{out}");
    }
    for pod in &state.pods {
        let line = format!(
            "{:<10} {:<22} {:<14} {}",
            pod.namespace,
            pod.name,
            pod.ip,
            pod.node.as_deref().unwrap_or("-")
        );
        assert!(out.contains(&line), "{line:?} missing from:\n{out}");
    }
    assert_eq!(state.pods.len(), 6);
    let (code, again, _) = testbed(&dir, "up");
    assert_eq!(code, 1);
    assert!(
        again.starts_with(&format!("The test bed is already up (pid {})", state.pid)),
        "{again}"
    );
    let (code, status, _) = testbed(&dir, "status");
    assert_eq!(code, 0);
    assert!(status.contains(&state.kubeconfig.display().to_string()));

    // The printed shell, as root here (no sudo needed): the user, the cluster, the helper.
    let shell = out
        .lines()
        .find(|l| l.ends_with("bash --norc"))
        .expect("the shell line")
        .trim()
        .trim_start_matches("sudo ")
        .trim_end_matches("bash --norc");
    let check = format!(
        "{shell} sh -c 'id -u; kubectl get pods -o name; kubectl --context staging get pods -o name; \
         helper-probe --socket \"$ERLBRIDGE_HELPER_SOCKET\" whoami'"
    );
    let out = Command::new("sh")
        .args(["-c", &check])
        .env("TERM", "dumb")
        .output()
        .expect("sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "61001",
            "pod/app-0",
            "pod/app-1",
            "pod/app-2",
            "pod/web-7c9f8d6b5-00000"
        ]
    );
    assert!(
        lines[5].contains("61001"),
        "the helper answers the user: {text}"
    );
    // Without erlbridge the user's local node cannot reach a pod (the control).
    let app0 = state
        .pod("default", "app-0")
        .expect("app-0")
        .node
        .clone()
        .expect("node");
    let control = bed
        .ws
        .erl_eval(
            bed.user(),
            &state.cookie,
            &format!("net_kernel:connect_node('{app0}')"),
            &[],
        )
        .expect("local node");
    assert_eq!(control, "false");
    drop(bed);

    let (code, out, err) = testbed(&dir, "down");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("The test bed is down"), "{out}");
    assert_eq!(leftovers(&state), Vec::<String>::new());
    assert!(!dir.exists());
}

#[test]
fn down_removes_what_a_killed_server_left() {
    let holder = state_dir();
    let dir = holder.path().join("state");
    let (code, out, err) = testbed(&dir, "up");
    assert_eq!(code, 0, "{out}{err}");
    let state = Attached::load(&dir).expect("attach").state;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while standing::alive(state.pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Attached::load(&dir).is_err(), "a dead server is not up");
    let (code, out, err) = testbed(&dir, "down");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("The test bed was not running; removed"),
        "{out}"
    );
    assert_eq!(leftovers(&state), Vec::<String>::new());
    assert!(!dir.exists());
}
