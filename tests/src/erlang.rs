//! Real Erlang nodes (Debian's erlang-base): starting a pod's node, and evaluating an
//! expression on a short-lived hidden node, printing the result as one line.
//!
//! What OTP 25.2 (Debian 12) does, checked here:
//! - A node without epmd: `-start_epmd false` alone fails at start ("register/listen error:
//!   econnrefused"); `-erl_epmd_port N` makes it listen on N and carry on when registration
//!   fails. A peer finds it only if it assumes the same port: with `-erl_epmd_port N` its
//!   `port_please` answers N for every node without asking any epmd (a hidden peer adds
//!   `-dist_listen false` so it does not listen on N itself). `ERL_DIST_PORT` is ignored (it
//!   arrives with OTP 26); `inet_dist_listen_min`/`max` without epmd are not enough.
//! - `ERL_EPMD_PORT=N` in the environment moves epmd (it reads it) and the node's epmd client
//!   (erl turns it into `-epmd_port N`); peers need the same variable.
//! - Nodes named by an IPv6 address (`app@fd00:10:244::b`) work with `-proto_dist inet6_tcp`
//!   on both sides; the node then listens on `[::]` (IPv4 too), epmd already listens on both.
//!   An `inet_tcp` peer cannot reach such a name (pang).

use std::collections::BTreeMap;

/// The evaluator's `-eval`: evaluates the expression in `EB_EXPR` and prints
/// `{ok,Value}` or `{error,Reason}` on one line. Reading the expression from the environment
/// spares every quoting problem.
const EVAL: &str = r#"R = try
        {ok, Ts, _} = erl_scan:string(os:getenv("EB_EXPR") ++ "."),
        {ok, Es} = erl_parse:parse_exprs(Ts),
        {value, V, _} = erl_eval:exprs(Es, []),
        {ok, V}
    catch C:E -> {error, {C, E}}
    end,
    io:format("~0p~n", [R]),
    halt(0)."#;

/// The command line (after `env`-style variables) that starts a hidden node `name`, evaluates
/// `expr` there and prints the result. `extra` goes before `-eval` (e.g. `-kernel inetrc ...`).
pub fn eval_argv(name: &str, cookie: &str, expr: &str, extra: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "timeout",
        "60",
        "env",
        &format!("EB_EXPR={expr}"),
        "erl",
        "-name",
        name,
        "-hidden",
        "-setcookie",
        cookie,
        "-noshell",
        "-noinput",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    argv.extend(["-eval".to_owned(), EVAL.to_owned()]);
    argv
}

/// `erlbridge up`'s arguments after TARGET that run `script` on a hidden local node as `-- CMD`
/// (the cookie on its command line: tests of the cookie's privacy start their own).
pub fn command_args(cookie: &str, script: &str) -> Vec<String> {
    [
        "--",
        "erl",
        "-name",
        "ci@127.0.0.1",
        "-hidden",
        "-setcookie",
        cookie,
        "-noshell",
        "-eval",
        script,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// An expression that evaluates `expr` on node `node` (through erpc), for [`eval_argv`].
pub fn on_node(node: &str, expr: &str) -> String {
    on_node_within(node, expr, 15_000)
}

/// [`on_node`] with a bound of `ms` milliseconds (the evaluator itself stops after 60 s).
pub fn on_node_within(node: &str, expr: &str, ms: u32) -> String {
    format!("erpc:call('{node}', fun() -> {expr} end, {ms})")
}

/// The value printed by the evaluator: `Ok(term text)` for `{ok,Term}`, `Err` otherwise.
pub fn parse_result(stdout: &str) -> Result<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no result printed: {stdout:?}"))?;
    match line.strip_prefix("{ok,").and_then(|l| l.strip_suffix('}')) {
        Some(value) => Ok(value.to_owned()),
        None => Err(line.to_owned()),
    }
}

/// The command line that runs a pod's Erlang node.
pub fn node_argv(node: &str, cookie: &str, dist_port: Option<u16>) -> Vec<String> {
    let mut argv: Vec<String> = [
        "erl",
        "-name",
        node,
        "-setcookie",
        cookie,
        "-noshell",
        "-noinput",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(port) = dist_port {
        for key in ["inet_dist_listen_min", "inet_dist_listen_max"] {
            argv.extend(["-kernel".to_owned(), key.to_owned(), port.to_string()]);
        }
    }
    argv
}

/// The command line that runs a pod's node with Elixir loaded (a release built with Mix), for
/// pods whose container command is `elixir`.
pub fn elixir_node_argv(node: &str, cookie: &str, dist_port: Option<u16>) -> Vec<String> {
    elixir_node_argv_with(node, cookie, dist_port, &[])
}

/// [`elixir_node_argv`] with `erl_flags` passed on to erl (`--erl`).
pub fn elixir_node_argv_with(
    node: &str,
    cookie: &str,
    dist_port: Option<u16>,
    erl_flags: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = ["elixir", "--name", node, "--cookie", cookie, "--no-halt"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if let Some(port) = dist_port {
        argv.extend([
            "--erl".to_owned(),
            format!("-kernel inet_dist_listen_min {port} inet_dist_listen_max {port}"),
        ]);
    }
    if !erl_flags.is_empty() {
        argv.extend(["--erl".to_owned(), erl_flags.join(" ")]);
    }
    argv.extend([
        "-e".to_owned(),
        "Application.ensure_all_started(:iex)".to_owned(),
    ]);
    argv
}

/// How a pod's node takes part in distribution, as its container's args and environment set
/// it up: what a peer needs to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dist {
    /// Named by an IPv6 address: `-proto_dist inet6_tcp`, on the node and its peers.
    pub ipv6: bool,
    /// epmd's port, when `ERL_EPMD_PORT` moves it from 4369.
    pub epmd_port: Option<u16>,
    /// The node's fixed port when it runs without epmd (`-erl_epmd_port N` in its args or in
    /// `ERL_FLAGS`/`ERL_AFLAGS`/`ERL_ZFLAGS`).
    pub epmdless_port: Option<u16>,
}

/// The environment variables erl reads flags from.
const FLAG_VARIABLES: [&str; 3] = ["ERL_AFLAGS", "ERL_FLAGS", "ERL_ZFLAGS"];

impl Dist {
    /// What `node`, started with `args` in `env`, needs of its peers.
    pub fn of(node: &str, args: &[String], env: &BTreeMap<String, String>) -> Dist {
        let host = node.split_once('@').map_or("", |(_, host)| host);
        let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
        for variable in FLAG_VARIABLES {
            words.extend(
                env.get(variable)
                    .map_or("", String::as_str)
                    .split_whitespace(),
            );
        }
        Dist {
            ipv6: host.parse::<std::net::Ipv6Addr>().is_ok(),
            epmd_port: env.get("ERL_EPMD_PORT").and_then(|p| p.parse().ok()),
            epmdless_port: words
                .windows(2)
                .find(|w| w[0] == "-erl_epmd_port")
                .and_then(|w| w[1].parse().ok()),
        }
    }

    /// Flags the node itself needs beyond its container's args.
    pub fn node_flags(&self) -> Vec<String> {
        if self.ipv6 {
            vec!["-proto_dist".to_owned(), "inet6_tcp".to_owned()]
        } else {
            Vec::new()
        }
    }

    /// Flags for a hidden node that dials this one (and listens nowhere when there is no
    /// epmd, so it can run beside the node).
    pub fn peer_flags(&self) -> Vec<String> {
        let mut flags = self.node_flags();
        if let Some(port) = self.epmdless_port {
            flags.extend(
                [
                    "-start_epmd",
                    "false",
                    "-dist_listen",
                    "false",
                    "-erl_epmd_port",
                    &port.to_string(),
                ]
                .map(String::from),
            );
        }
        flags
    }

    /// Environment for such a peer.
    pub fn peer_env(&self) -> Vec<(String, String)> {
        self.epmd_port
            .map(|p| ("ERL_EPMD_PORT".to_owned(), p.to_string()))
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_is_read_from_the_name_args_and_environment() {
        let env = BTreeMap::from([
            ("ERL_EPMD_PORT".to_owned(), "4370".to_owned()),
            (
                "ERL_FLAGS".to_owned(),
                "-start_epmd false -erl_epmd_port 9100".to_owned(),
            ),
        ]);
        let dist = Dist::of("app@fd00:10:244::b", &[], &env);
        assert_eq!(
            dist,
            Dist {
                ipv6: true,
                epmd_port: Some(4370),
                epmdless_port: Some(9100)
            }
        );
        assert_eq!(dist.peer_env(), [("ERL_EPMD_PORT".into(), "4370".into())]);
        assert!(dist.peer_flags().contains(&"-dist_listen".to_owned()));
        let args = ["-erl_epmd_port".to_owned(), "9200".to_owned()];
        let dist = Dist::of("app@10.244.1.8", &args, &BTreeMap::new());
        assert_eq!((dist.ipv6, dist.epmdless_port), (false, Some(9200)));
        assert!(dist.node_flags().is_empty());
        assert_eq!(
            Dist::of("app@10.0.0.1", &[], &BTreeMap::new()),
            Dist::default()
        );
    }

    #[test]
    fn results_are_read_from_the_last_term_line() {
        assert_eq!(
            parse_result("noise\n{ok,'app@10.0.0.1'}\n"),
            Ok("'app@10.0.0.1'".into())
        );
        assert!(parse_result("{error,{error,badarg}}\n").is_err());
        assert!(parse_result("").is_err());
    }
}
