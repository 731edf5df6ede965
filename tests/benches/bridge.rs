//! Benchmark (needs root): Erlang distribution through erlbridge in both modes (nat: the
//! helper's redirect; epmd: the epmd module, no helper) next to the limit, a direct route to
//! the pod from the cluster namespace, in the same run: `rpc:call` round trip p50/p99 and bulk
//! throughput (a 64 MiB binary in an rpc, best of three). Then the time from `erlbridge up` to
//! its ready event for one pod and for a 20-replica StatefulSet, in both modes. Prints figures
//! only.

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
    let up = |target: &str, mode: &str| {
        let start = Instant::now();
        let (bridge, ready) = s.up(&[target, "--mode", mode]);
        (start.elapsed(), bridge, ready)
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

    let (ready_one, bridge, _) = up("app-0", "nat");
    let nat = parse(&s.ws.erl_eval(&s.user, COOKIE, &measurement(&node), &[])?)?;
    drop(bridge);
    let (ready_one_epmd, bridge, ready) = up("app-0", "epmd");
    let flags = ready.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let epmd = parse(
        &s.ws
            .erl_eval(&s.user, COOKIE, &measurement(&node), &flags)?,
    )?;
    drop(bridge);

    let mut ready_times = Vec::new();
    for mode in ["nat", "epmd"] {
        let (twenty, bridge, _) = up("statefulset/big", mode);
        drop(bridge);
        let (one, bridge, _) = up("big-0", mode);
        drop(bridge);
        ready_times.push((mode, one, twenty));
    }

    println!("Erlang distribution to one pod node: direct route vs through erlbridge, per mode");
    println!(
        "{:<28} {:>14} {:>14} {:>12}",
        "", "rpc:call p50", "rpc:call p99", "bulk MB/s"
    );
    for (name, (p50, p99, mbps)) in [
        ("direct (the limit)", direct),
        ("erlbridge, mode nat", nat),
        ("erlbridge, mode epmd", epmd),
    ] {
        println!("{name:<28} {:>12}us {:>12}us {:>12}", p50, p99, mbps);
    }
    for (name, (p50, p99, mbps)) in [("nat", nat), ("epmd", epmd)] {
        println!(
            "ratios {name}/direct: p50 {:.1}x, p99 {:.1}x, throughput {:.2}x",
            p50 as f64 / direct.0.max(1) as f64,
            p99 as f64 / direct.1.max(1) as f64,
            mbps as f64 / direct.2.max(1) as f64
        );
    }
    let (p50, p99, bulk) = (
        epmd.0 as f64 / nat.0.max(1) as f64,
        epmd.1 as f64 / nat.1.max(1) as f64,
        epmd.2 as f64 / nat.2.max(1) as f64,
    );
    // Within the noise of one run (10%), epmd mode must be no slower than nat mode.
    let no_slower = p50 <= 1.1 && p99 <= 1.1 && bulk >= 0.9;
    println!(
        "ratios epmd/nat: p50 {p50:.2}x, p99 {p99:.2}x, throughput {bulk:.2}x: epmd mode is {} nat mode",
        if no_slower {
            "no slower than"
        } else {
            "SLOWER than"
        }
    );
    println!("\ntime from `erlbridge up` to its ready event");
    println!(
        "  1 pod (app-0):                 nat {:>6.0} ms   epmd {:>6.0} ms",
        ready_one.as_secs_f64() * 1e3,
        ready_one_epmd.as_secs_f64() * 1e3
    );
    for (mode, one, twenty) in ready_times {
        println!(
            "  mode {mode:<4} 1 pod (big-0) {:>6.0} ms; 20-replica StatefulSet {:>6.0} ms ({:.1}x one pod, {:.0} ms per pod)",
            one.as_secs_f64() * 1e3,
            twenty.as_secs_f64() * 1e3,
            twenty.as_secs_f64() / one.as_secs_f64(),
            twenty.as_secs_f64() * 1e3 / 20.0
        );
    }
    Ok(())
}
