//! What `testbed up` prints: where everything is, the pods, and the exact commands to run
//! erlbridge and a local node as the test user inside the workstation.

use std::fmt::Write as _;

use super::State;

/// The guide for a test bed.
pub fn text(state: &State) -> String {
    let mut out = String::new();
    let uid = state.user.uid;
    let groups: Vec<String> = state.user.groups.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "  workstation   network namespace {} (its default routes lead nowhere: without \
         erlbridge no pod is reachable from it)",
        state.workstation
    );
    let _ = writeln!(
        out,
        "  kubeconfig    {} (contexts erlbridge-test (current), staging, no-rights, elsewhere)",
        state.kubeconfig.display()
    );
    let _ = writeln!(
        out,
        "  helper        erlbridge-helperd as root, socket {} (access group {})",
        state.helper_socket.display(),
        groups.join(",")
    );
    let _ = writeln!(
        out,
        "  user          uid {uid} (groups {}), home {}",
        groups.join(","),
        state.home.display()
    );
    let _ = writeln!(out, "  binaries      {}", state.bins.display());
    let _ = writeln!(
        out,
        "  cookie        {} (also in secret/app-cookie)",
        state.cookie
    );
    let _ = writeln!(
        out,
        "\nPods:\n  {:<10} {:<22} {:<14} NODE",
        "NAMESPACE", "POD", "IP"
    );
    for pod in &state.pods {
        let _ = writeln!(
            out,
            "  {:<10} {:<22} {:<14} {}",
            pod.namespace,
            pod.name,
            pod.ip,
            pod.node.as_deref().unwrap_or("-")
        );
    }
    let app0 = state
        .pod("default", "app-0")
        .ok()
        .and_then(|p| p.node.clone())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nA shell as uid {uid} inside the workstation (KUBECONFIG and ERLBRIDGE_HELPER_SOCKET \
         set; open two):\n  {}\n",
        as_user(
            state,
            &format!("TERM=\"$TERM\" PS1='testbed uid {uid} \\w\\$ ' bash --norc")
        )
    );
    let _ = writeln!(
        out,
        "In the first:   erlbridge up statefulset/app\n\
         In the second: erl -name me@127.0.0.1 -setcookie {} -hidden -remsh {app0}\n\
         Also:          erlbridge up app-0 | erlbridge up statefulset/app -n prod | \
         erlbridge up deployment/web --context staging |\n                \
         erlbridge remsh app-0 --cookie-from secret/app-cookie | erlbridge doctor statefulset/app\n",
        state.cookie
    );
    let _ = writeln!(
        out,
        "Or one command each, from here:\n  {}\n  {}\n\n`sudo scripts/testbed down` removes \
         everything.",
        as_user(
            state,
            &format!(
                "erlbridge up statefulset/app --kubeconfig {} --helper-socket {}",
                state.kubeconfig.display(),
                state.helper_socket.display()
            )
        ),
        as_user(
            state,
            &format!(
                "TERM=\"$TERM\" erl -name me@127.0.0.1 -setcookie {} -hidden -remsh {app0}",
                state.cookie
            )
        ),
    );
    out
}

/// `command` run as the test user inside the workstation, with a clean environment: the
/// staged binaries first on PATH, the kubeconfig and helper socket in the environment.
pub fn as_user(state: &State, command: &str) -> String {
    let user = &state.user;
    let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
    let groups = match groups.is_empty() {
        true => "--clear-groups".to_owned(),
        false => format!("--groups={}", groups.join(",")),
    };
    format!(
        "sudo ip netns exec {} setpriv --reuid={} --regid={} {groups} -- env -i HOME={} \
         PATH={}:/usr/local/bin:/usr/bin:/bin KUBECONFIG={} ERLBRIDGE_HELPER_SOCKET={} {command}",
        state.workstation,
        user.uid,
        user.gid,
        state.home.display(),
        state.bins.display(),
        state.kubeconfig.display(),
        state.helper_socket.display(),
    )
}
