//! The README's CI examples (`erl`, `elixir -e`, `mix run` in a Mix project, `sh -c` with
//! `$ERLBRIDGE_*`), run exactly as the README writes them, as an unprivileged user with the
//! test cluster's kubeconfig and helper. Helper as root.

use std::time::Duration;

use erlbridge_testbed::Scenario;

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

/// The commands between the README's `ci-examples` markers, each with its continuation lines.
fn ci_examples() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let block = readme
        .split_once("<!-- ci-examples -->")
        .and_then(|(_, rest)| rest.split_once("<!-- /ci-examples -->"))
        .map(|(block, _)| block)
        .expect("the README marks its CI examples");
    let mut commands: Vec<String> = Vec::new();
    for line in block.lines().filter(|l| !l.starts_with("```")) {
        if line.starts_with("erlbridge ") {
            commands.push(line.to_owned());
        } else if let Some(last) = commands.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    commands
}

const MIX_PROJECT: &str = r#"defmodule Check.MixProject do
  use Mix.Project
  def project, do: [app: :check, version: "0.1.0"]
end
"#;

const CHECK_EXS: &str = r#"Node.set_cookie(String.to_atom(System.fetch_env!("ERLBRIDGE_COOKIE")))
node = String.to_atom(System.fetch_env!("ERLBRIDGE_NODE"))
true = Node.connect(node)
IO.inspect(:erpc.call(node, :erlang, :node, []))
"#;

#[test]
fn the_readmes_ci_examples_run_as_written() {
    let s = Scenario::start(MANIFEST, 61140);
    let nodes: Vec<String> = ["app-0", "app-1"]
        .iter()
        .map(|p| format!("app@{}", s.cluster.pod(p).ip()))
        .collect();
    assert!(!s.reaches(COOKIE, &nodes[0]), "the control");
    let project = s.ws.home(&s.user).expect("home").join("check");
    std::fs::create_dir_all(&project).expect("project");
    std::fs::write(project.join("mix.exs"), MIX_PROJECT).expect("mix.exs");
    std::fs::write(project.join("check.exs"), CHECK_EXS).expect("check.exs");
    for path in [
        &project,
        &project.join("mix.exs"),
        &project.join("check.exs"),
    ] {
        std::os::unix::fs::chown(path, Some(s.user.uid), Some(s.user.gid)).expect("chown");
    }
    let examples = ci_examples();
    assert_eq!(examples.len(), 4, "{examples:#?}");
    let bins = std::path::Path::new(&s.bins.path("erlbridge"))
        .parent()
        .expect("bins")
        .display()
        .to_string();
    for example in examples {
        let script = format!("cd {} && {example}", project.display());
        let argv = [
            "env".to_owned(),
            format!("PATH={bins}:/usr/local/bin:/usr/bin:/bin"),
            format!("KUBECONFIG={}", s.cluster.kubeconfig.display()),
            format!("ERLBRIDGE_HELPER_SOCKET={}", s.helper_socket()),
            "sh".to_owned(),
            "-c".to_owned(),
            script,
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, out, err) = s.ws.run_as(&s.user, &argv).expect("example");
        assert_eq!(code, 0, "{example}\n{out}{err}");
        assert!(
            nodes.iter().any(|n| out.contains(n.as_str())),
            "{example}: no node in its output:\n{out}{err}"
        );
        s.wait_no_mappings(Duration::from_secs(2));
    }
}
