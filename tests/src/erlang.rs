//! Real Erlang nodes (Debian's erlang-base): starting a pod's node, and evaluating an
//! expression on a short-lived hidden node, printing the result as one line.

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

/// An expression that evaluates `expr` on node `node` (through erpc), for [`eval_argv`].
pub fn on_node(node: &str, expr: &str) -> String {
    format!("erpc:call('{node}', fun() -> {expr} end, 15000)")
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
    argv.extend([
        "-e".to_owned(),
        "Application.ensure_all_started(:iex)".to_owned(),
    ]);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

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
