//! Benchmark (needs root): Erlang distribution through erlbridge next to the limit, a direct
//! route to the pod from the cluster namespace, in the same run: `rpc:call` round trip p50/p99
//! and bulk throughput (a 64 MiB binary in an rpc, best of three). Then the time from `erlbridge up` to its
//! ready event for one pod and for a 20-replica StatefulSet. Prints figures only.

use std::time::Instant;

use anyhow::Context;
use erlbridge_testbed::{Scenario, erlang};

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 1
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster", ERL_DIST_PORT = "9100" }

[[statefulsets]]
name = "big"
replicas = 20
labels = { app = "big" }
env = { RELEASE_NODE = "big@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

/// Connects, warms up, then measures: prints `{P50us, P99us, MBps}`.
fn measurement(node: &str) -> String {
    format!(
        "begin N = '{node}', true = net_kernel:connect_node(N), \
         _ = [rpc:call(N, erlang, node, []) || _ <- lists:seq(1, 200)], \
         Ts = lists:sort([element(1, timer:tc(rpc, call, [N, erlang, node, []])) || _ <- lists:seq(1, 3000)]), \
         P = fun(Q) -> lists:nth(max(1, round(Q * length(Ts))), Ts) end, \
         Bin = binary:copy(<<7>>, 64 * 1024 * 1024), \
         Us = lists:min([element(1, timer:tc(rpc, call, [N, erlang, byte_size, [Bin]])) || _ <- [1, 2, 3]]), \
         {{P(0.5), P(0.99), round(64 / (Us / 1.0e6))}} end"
    )
}

fn parse(text: &str) -> anyhow::Result<(u64, u64, u64)> {
    let parts: Vec<u64> = text
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("unexpected result {text}"))?;
    match parts.as_slice() {
        [a, b, c] => Ok((*a, *b, *c)),
        _ => anyhow::bail!("unexpected result {text}"),
    }
}

fn main() -> anyhow::Result<()> {
    let s = Scenario::start(MANIFEST, 61001);
    let up = |target: &str| {
        let start = Instant::now();
        let (bridge, _) = s.up(&[target]);
        (start.elapsed(), bridge)
    };

    let node = format!("app@{}", s.cluster.pod("app-0").ip());
    let argv = erlang::eval_argv("direct@172.31.255.1", COOKIE, &measurement(&node), &[]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut direct = s.cluster.netns().command(&argv);
    direct.env("HOME", "/tmp");
    let out = direct.output()?;
    let direct = parse(
        &erlang::parse_result(&String::from_utf8_lossy(&out.stdout)).map_err(anyhow::Error::msg)?,
    )?;

    let (ready_one, bridge) = up("app-0");
    let bridged = parse(&s.ws.erl_eval(&s.user, COOKIE, &measurement(&node), &[])?)?;
    drop(bridge);

    let (ready_twenty, bridge) = up("statefulset/big");
    drop(bridge);
    let (ready_one_again, bridge) = up("big-0");
    drop(bridge);

    println!("Erlang distribution to one pod node, direct route vs through erlbridge");
    println!(
        "{:<28} {:>14} {:>14} {:>12}",
        "", "rpc:call p50", "rpc:call p99", "bulk MB/s"
    );
    for (name, (p50, p99, mbps)) in [
        ("direct (the limit)", direct),
        ("through erlbridge", bridged),
    ] {
        println!("{name:<28} {:>12}us {:>12}us {:>12}", p50, p99, mbps);
    }
    println!(
        "ratios bridge/direct: p50 {:.1}x, p99 {:.1}x, throughput {:.2}x",
        bridged.0 as f64 / direct.0.max(1) as f64,
        bridged.1 as f64 / direct.1.max(1) as f64,
        bridged.2 as f64 / direct.2.max(1) as f64
    );
    println!("\ntime from `erlbridge up` to its ready event");
    println!(
        "  1 pod (app-0):                 {:>8.0} ms",
        ready_one.as_secs_f64() * 1e3
    );
    println!(
        "  1 pod (big-0):                 {:>8.0} ms",
        ready_one_again.as_secs_f64() * 1e3
    );
    println!(
        "  20-replica StatefulSet (big):  {:>8.0} ms ({:.1}x one pod, {:.0} ms per pod)",
        ready_twenty.as_secs_f64() * 1e3,
        ready_twenty.as_secs_f64() / ready_one_again.as_secs_f64(),
        ready_twenty.as_secs_f64() * 1e3 / 20.0
    );
    Ok(())
}
