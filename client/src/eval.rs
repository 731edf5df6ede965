//! The `eval` subcommand: one Erlang (or `--elixir`, Elixir) expression evaluated on every
//! bridged node of the target at once, from the hidden local node ([`crate::local`]), each
//! node bounded by `--timeout`. Each node's result is printed as `~p` (or `inspect`) prints
//! it: a block per node in text mode, an `eval` event per node in JSON mode, with the error
//! kind when it raised, did not answer in time, or was down. What the expression prints goes
//! to stderr. CI can run `erlbridge eval sts/app 'erlang:memory(total)'` with nothing but
//! Erlang installed.

use base64::Engine as _;
use tokio::io::AsyncBufReadExt as _;

use crate::bridge::BridgedNode;
use crate::cli::{BridgeArgs, EvalArgs, exit};
use crate::discover::Target;
use crate::local::{Interrupt, LocalNode, outcome, require_erl, run_beside, spawn};
use crate::output::{self, Event, Failure, Output};
use crate::up::{Up, bring_up};

/// The local node's script (`-eval`): the expression on every node, a line per node.
const SCRIPT: &str = include_str!("../erlang/eval.eval");

/// What one node gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `ok`, `raised`, `timeout` or `nodedown`.
    pub kind: String,
    /// The value as printed, or what went wrong.
    pub text: String,
}

/// One line of the script's output: `EB <node> <kind> <base64 text>`.
fn parse_line(line: &str) -> Option<(String, Answer)> {
    let mut words = line.strip_prefix("EB ")?.split(' ');
    let (node, kind, text) = (words.next()?, words.next()?, words.next().unwrap_or(""));
    let text = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Some((
        node.to_owned(),
        Answer {
            kind: kind.to_owned(),
            text: String::from_utf8_lossy(&text).trim_end().to_owned(),
        },
    ))
}

/// TARGET and EXPR from the words, or what is wrong with them.
fn target_and_expr(args: &EvalArgs) -> Result<(Option<Target>, String), Failure> {
    let usage = |m: String| Failure::new(exit::USAGE, "usage", m);
    match (args.words.as_slice(), &args.selector) {
        ([expr], Some(_)) => Ok((None, expr.clone())),
        ([target, expr], None) => {
            let target = target.parse::<Target>().map_err(|e| usage(e.to_string()))?;
            Ok((Some(target), expr.clone()))
        }
        ([_, _], Some(_)) => Err(usage(
            "with -l SELECTOR, give the expression alone (no TARGET)".to_owned(),
        )),
        _ => Err(usage(
            "give a TARGET and an expression: erlbridge eval sts/app 'erlang:memory(total)'"
                .to_owned(),
        )),
    }
}

/// Runs `erlbridge eval`; returns the process's exit code.
pub async fn run(args: EvalArgs) -> Result<u8, Failure> {
    let (target, expr) = target_and_expr(&args)?;
    require_erl()?;
    let EvalArgs {
        selector,
        elixir,
        timeout,
        options,
        ..
    } = args;
    let bridge_args = BridgeArgs {
        target,
        selector,
        options,
    };
    let output = bridge_args.output;
    let Up {
        mut bridge, cookie, ..
    } = bring_up(&bridge_args).await?;
    let nodes: Vec<BridgedNode> = bridge.ready().nodes;
    let local = LocalNode::new(&mut bridge, &bridge_args, cookie.as_deref(), "eval")?;
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    let millis = u64::try_from(timeout.0.as_millis()).unwrap_or(u64::MAX);
    let env = [
        ("EB_NODES", names.join(" ")),
        ("EB_EXPR", expr),
        ("EB_TIMEOUT", millis.to_string()),
        ("EB_ELIXIR", if elixir { "1" } else { "0" }.to_owned()),
    ];
    let mut child = spawn(
        local
            .script(SCRIPT, &env)
            .stdout(std::process::Stdio::piped()),
    )?;
    let stdout = child.stdout.take();
    let lines = tokio::spawn(async move {
        let mut answers = Vec::new();
        if let Some(stdout) = stdout {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                answers.extend(parse_line(&line));
            }
        }
        answers
    });
    let code = run_beside(
        &mut bridge,
        output,
        child,
        Interrupt::Both,
        std::future::pending(),
    )
    .await;
    let answers = lines.await.unwrap_or_default();
    if code == 9 {
        let why = answers
            .iter()
            .find(|(_, a)| a.kind == "syntax")
            .map_or("it does not parse", |(_, a)| a.text.as_str());
        return Err(Failure::new(
            exit::USAGE,
            "usage",
            format!("the expression is not Erlang: {why}"),
        ));
    }
    for node in &nodes {
        let answer = answers
            .iter()
            .find(|(n, _)| *n == node.node)
            .map(|(_, a)| a);
        report(output, node, answer);
    }
    match code {
        8 => Ok(exit::EVAL_FAILED),
        code => outcome(code, names.first().copied().unwrap_or_default()),
    }
}

/// Says what `node` gave (nothing, when the local node ended before it could say).
fn report(output: Output, node: &BridgedNode, answer: Option<&Answer>) {
    let (result, error, message) = match answer {
        Some(a) if a.kind == "ok" => (Some(a.text.clone()), None, None),
        Some(a) => (None, Some(a.kind.clone()), Some(a.text.clone())),
        None => (
            None,
            Some("interrupted".to_owned()),
            Some("the evaluation was interrupted".to_owned()),
        ),
    };
    match output {
        Output::Json => output::emit(&Event::Eval {
            node: node.node.clone(),
            pod: node.pod.clone(),
            result,
            error,
            message,
        }),
        Output::Text => {
            let body = match (&result, &error, &message) {
                (Some(value), _, _) => value.clone(),
                (None, Some(kind), Some(message)) => format!("** {kind}: {message}"),
                _ => String::new(),
            };
            output::say(&format!("== {} (pod {})\n{body}", node.node, node.pod));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_lines_are_read() {
        assert_eq!(
            parse_line("EB app@10.244.1.8 ok Mw=="),
            Some((
                "app@10.244.1.8".to_owned(),
                Answer {
                    kind: "ok".into(),
                    text: "3".into()
                }
            ))
        );
        assert_eq!(parse_line("side output"), None);
        assert_eq!(parse_line("EB app@h ok !!"), None);
    }
}
