//! What a pod's spec says of its Erlang node: which container runs it (pods often carry
//! sidecars), where its epmd listens, and, for a node that runs without epmd, its fixed
//! distribution port and its name, read from the places releases put them (container ports,
//! the environment, the command line and `ERL_FLAGS`).

use k8s_openapi::api::core::v1::Container;

/// The environment variables whose words reach `erl`'s command line.
const FLAG_VARIABLES: [&str; 3] = ["ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"];

/// The container that runs the Erlang node: the one with a port named `epmd`, else one whose
/// environment names a release node or Erlang flags, else one whose command runs Erlang or
/// Elixir, else the first.
pub fn erlang_container(containers: &[Container]) -> Option<&Container> {
    let has_epmd_port = |c: &&Container| {
        c.ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("epmd"))
    };
    let names_a_node = |c: &&Container| {
        c.env.iter().flatten().any(|e| {
            e.name.starts_with("RELEASE_")
                || e.name.starts_with("ERL_")
                || e.name == "ELIXIR_ERL_OPTIONS"
        })
    };
    let runs_erlang = |c: &&Container| {
        command_line(c).iter().any(|word| {
            let program = word.rsplit('/').next().unwrap_or(word);
            matches!(program, "erl" | "elixir" | "iex" | "beam.smp" | "erlexec")
        })
    };
    containers
        .iter()
        .find(has_epmd_port)
        .or_else(|| containers.iter().find(names_a_node))
        .or_else(|| containers.iter().find(runs_erlang))
        .or_else(|| containers.first())
}

/// The container's command and args, word by word.
fn command_line(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|arg| arg.split_whitespace())
        .map(str::to_owned)
        .collect()
}

/// The words `erl` gets: the container's command line and its `ERL_*FLAGS` (values already
/// expanded by the caller's `lookup`).
pub fn erl_words(c: &Container, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut words = command_line(c);
    for var in FLAG_VARIABLES {
        if let Some(value) = lookup(var) {
            words.extend(value.split_whitespace().map(str::to_owned));
        }
    }
    words
}

/// The value after `flag` among `words` (`-erl_epmd_port 9100`, `-name app@host`).
pub fn flag_value<'a>(words: &'a [String], flags: &[&str]) -> Option<&'a str> {
    words
        .windows(2)
        .find(|pair| flags.contains(&pair[0].as_str()))
        .map(|pair| pair[1].as_str())
}

/// A node that needs no epmd: its fixed distribution port and where the spec says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epmdless {
    /// Its distribution port.
    pub port: u16,
    /// Where that came from, for the user ("-erl_epmd_port 9100 in the pod's args").
    pub from: String,
    /// Whether the user said so (`--dist-port`): then the pod's epmd is not even asked.
    pub forced: bool,
}

/// Where a node listens without epmd, if the spec says: `-erl_epmd_port N` on its command line
/// or in `ERL_FLAGS` (OTP 25's way), or `ERL_DIST_PORT` (OTP 26's).
pub fn epmdless(words: &[String], lookup: impl Fn(&str) -> Option<String>) -> Option<Epmdless> {
    if let Some(port) = flag_value(words, &["-erl_epmd_port"]).and_then(|p| p.parse().ok()) {
        return Some(Epmdless {
            port,
            from: format!("-erl_epmd_port {port} in the pod's command line or ERL_FLAGS"),
            forced: false,
        });
    }
    let port = lookup("ERL_DIST_PORT")?.parse().ok()?;
    Some(Epmdless {
        port,
        from: format!("ERL_DIST_PORT={port} in the pod's environment"),
        forced: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).expect("container")
    }

    #[test]
    fn the_erlang_container_is_found_among_sidecars() {
        let pods = [
            (
                vec![
                    container(
                        serde_json::json!({"name": "envoy", "ports": [{"containerPort": 15001}]}),
                    ),
                    container(
                        serde_json::json!({"name": "app", "env": [{"name": "RELEASE_NODE", "value": "a@b"}]}),
                    ),
                ],
                "app",
            ),
            (
                vec![
                    container(serde_json::json!({"name": "log"})),
                    container(serde_json::json!({"name": "app", "command": ["/opt/app/bin/erl"]})),
                ],
                "app",
            ),
            (
                vec![
                    container(
                        serde_json::json!({"name": "metrics", "env": [{"name": "RELEASE_X", "value": "1"}]}),
                    ),
                    container(
                        serde_json::json!({"name": "app", "ports": [{"name": "epmd", "containerPort": 4370}]}),
                    ),
                ],
                "app",
            ),
            (vec![container(serde_json::json!({"name": "only"}))], "only"),
        ];
        for (containers, want) in pods {
            assert_eq!(
                erlang_container(&containers).map(|c| c.name.as_str()),
                Some(want)
            );
        }
        assert!(erlang_container(&[]).is_none());
    }

    #[test]
    fn epmdless_nodes_are_read_from_flags_and_the_environment() {
        let c = container(serde_json::json!({"name": "app",
            "args": ["-name", "app@10.0.0.1", "-start_epmd", "false", "-erl_epmd_port", "9100"]}));
        let none = |_: &str| None;
        let words = erl_words(&c, none);
        assert_eq!(
            flag_value(&words, &["-name", "--name"]),
            Some("app@10.0.0.1")
        );
        assert_eq!(epmdless(&words, none).map(|e| e.port), Some(9100));
        let flags = |var: &str| (var == "ERL_FLAGS").then(|| "-erl_epmd_port 9200".to_owned());
        let plain = container(serde_json::json!({"name": "app"}));
        assert_eq!(
            epmdless(&erl_words(&plain, flags), flags).map(|e| e.port),
            Some(9200)
        );
        let dist = |var: &str| (var == "ERL_DIST_PORT").then(|| "9300".to_owned());
        let found = epmdless(&erl_words(&plain, dist), dist).expect("ERL_DIST_PORT");
        assert_eq!(found.port, 9300);
        assert!(found.from.contains("ERL_DIST_PORT=9300"), "{}", found.from);
        assert_eq!(epmdless(&erl_words(&plain, none), none), None);
    }
}
