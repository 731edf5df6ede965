//! erlbridge-demo (needs root): the whole story on the standing test bed (`sudo scripts/testbed
//! up`; `scripts/demo` brings it up and down around this). A StatefulSet `app` of three real
//! Erlang nodes in pod namespaces behind an emulated Kubernetes API, erlbridge-helperd running
//! as root, and an ordinary user who runs `erlbridge up statefulset/app` and then reaches every
//! pod node from a hidden local node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use erlbridge_testbed::require_root;
use erlbridge_testbed::standing::{Attached, DEFAULT_STATE_DIR};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erlbridge-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn run() -> anyhow::Result<()> {
    require_root();
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from);
    let bed = Attached::load(&dir)?;
    let (ws, user, state) = (&bed.ws, bed.user(), &bed.state);
    let cookie = state.cookie.as_str();
    let kubeconfig = state.kubeconfig.display().to_string();
    let socket = state.helper_socket.display().to_string();
    let node = |pod: &str| -> anyhow::Result<String> {
        state
            .pod("default", pod)?
            .node
            .clone()
            .with_context(|| format!("{pod} runs no Erlang node"))
    };

    step(&format!(
        "uid {} (no sudo) looks at the cluster: kubectl get pods -o wide",
        user.uid
    ));
    let (_, pods, _) = ws.run_as(
        user,
        &[
            "kubectl",
            "--kubeconfig",
            &kubeconfig,
            "get",
            "pods",
            "-o",
            "custom-columns=NAME:.metadata.name,IP:.status.podIP,PHASE:.status.phase",
        ],
    )?;
    print!("{pods}");
    let app0 = node("app-0")?;

    step(&format!(
        "without erlbridge, a local node cannot reach {app0}"
    ));
    let control = ws.erl_eval(
        user,
        cookie,
        &format!("net_kernel:connect_node('{app0}')"),
        &[],
    )?;
    println!("net_kernel:connect_node('{app0}') -> {control}");
    ensure!(
        control == "false",
        "the pod should be unreachable without erlbridge"
    );

    step(&format!(
        "uid {} runs: erlbridge up statefulset/app",
        user.uid
    ));
    let mut up = ws.spawn_as(
        user,
        &[
            &state.bin("erlbridge"),
            "up",
            "statefulset/app",
            "--kubeconfig",
            &kubeconfig,
            "--helper-socket",
            &socket,
        ],
    )?;
    up.wait_line(Duration::from_secs(60), |l| {
        l.contains("Ctrl-C ends the bridge")
    })
    .context("erlbridge did not get ready")?;
    for line in up.seen() {
        println!("  | {line}");
    }

    step("a hidden local node now reaches every pod node");
    for pod in ["app-0", "app-1", "app-2"] {
        let node = node(pod)?;
        let expr = format!(
            "{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, []), \
             rpc:call('{node}', erlang, system_info, [otp_release]), rpc:call('{node}', erlang, nodes, [])}}"
        );
        let answer = ws.erl_eval(user, cookie, &expr, &[])?;
        println!("{pod}: {{connected, node(), otp_release, nodes()}} = {answer}");
        ensure!(
            answer.starts_with(&format!("{{true,'{node}'")),
            "{pod} did not answer"
        );
    }
    println!(
        "(each pod still lists its two peers in nodes(): the hidden local node never splits the cluster)"
    );

    step(&format!(
        "the helper's rules while the bridge is up (only uid {}'s traffic is redirected)",
        user.uid
    ));
    let table = ws.helper_table().unwrap_or_default();
    for line in table.lines().filter(|l| l.contains(" : 127.0.0.1")) {
        println!("  {}", line.trim());
    }

    step("Ctrl-C on erlbridge");
    up.signal(nix::sys::signal::Signal::SIGINT);
    let code = up.wait_exit(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    let left = ws
        .helper_table()
        .unwrap_or_default()
        .matches(" : 127.0.0.1 . ")
        .count();
    println!("erlbridge exited with {code}; mappings left in the helper's table: {left}");
    ensure!(code == 0 && left == 0, "the bridge did not end cleanly");
    Ok(())
}
