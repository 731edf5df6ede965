//! Soak run (needs root; a benchmark, not a test): one bridge held while a pod restarts with a
//! new IP every minute and a hidden local node makes `rpc:call`s to it without pause. Prints the
//! calls made and failed, the longest outage, and erlbridge's RSS at start and end.
//! SOAK_MINUTES (default 10) and SOAK_RESTART_SECONDS (default 60) shorten it for a quick look.

use std::time::{Duration, Instant};

use erlbridge_testbed::{Scenario, rss_kib};

const COOKIE: &str = "monster";
const MANIFEST: &str = r#"
[[statefulsets]]
name = "app"
replicas = 2
labels = { app = "app" }
env = { RELEASE_NODE = "app@$(POD_IP)", RELEASE_COOKIE = "monster" }
"#;

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Calls the node named in `target_file` (re-read every call, since a restart renames it)
/// until `seconds` pass; prints `{Ok, Failed, LongestOutageMs}`.
fn caller(target_file: &str, seconds: u64) -> String {
    format!(
        "begin End = erlang:monotonic_time(millisecond) + {seconds} * 1000, \
         Loop = fun L(Ok, Fail, LastOk, Longest) -> \
           Now = erlang:monotonic_time(millisecond), \
           case Now > End of \
             true -> {{Ok, Fail, max(Longest, Now - LastOk)}}; \
             false -> \
               {{ok, Bin}} = file:read_file(\"{target_file}\"), \
               N = binary_to_atom(string:trim(Bin)), \
               case catch rpc:call(N, erlang, node, [], 2000) of \
                 N -> timer:sleep(20), L(Ok + 1, Fail, Now, max(Longest, Now - LastOk)); \
                 _ -> timer:sleep(100), L(Ok, Fail + 1, LastOk, Longest) \
               end \
           end \
         end, \
         Loop(0, 0, erlang:monotonic_time(millisecond), 0) end"
    )
}

fn main() -> anyhow::Result<()> {
    let minutes = env_secs("SOAK_MINUTES", 10);
    let every = Duration::from_secs(env_secs("SOAK_RESTART_SECONDS", 60));
    let total = Duration::from_secs(minutes * 60);
    let mut s = Scenario::start(MANIFEST, 61001);
    let (up, _) = s.up(&["statefulset/app"]);
    let rss_start = rss_kib(up.pid());

    let target = s.ws.scratch().join("soak-target");
    std::fs::write(&target, format!("app@{}", s.cluster.pod("app-1").ip()))?;
    let target_s = target.display().to_string();
    let argv = erlbridge_testbed::erlang::eval_argv(
        "soak@127.0.0.1",
        COOKIE,
        &caller(&target_s, total.as_secs()),
        &[],
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // The evaluator's own timeout must outlast the run.
    let mut argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    argv[1] = (total.as_secs() + 120).to_string();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut calls = s.ws.spawn_as(&s.user, &argv)?;

    let started = Instant::now();
    let mut restarts = 0;
    while started.elapsed() + every <= total {
        std::thread::sleep(every);
        let ip = s.cluster.restart_pod_with_new_ip("app-1")?;
        std::fs::write(&target, format!("app@{ip}"))?;
        restarts += 1;
    }
    let line = calls.wait_line(total + Duration::from_secs(120), |l| l.starts_with("{ok,"))?;
    let rss_end = rss_kib(up.pid());
    let figures = line
        .trim_start_matches("{ok,{")
        .trim_end_matches("}}")
        .to_owned();
    let parts: Vec<&str> = figures.split(',').collect();
    println!(
        "soak: {minutes} min, pod app-1 restarted with a new IP {restarts} times (every {}s)",
        every.as_secs()
    );
    println!(
        "rpc:calls: {} succeeded, {} failed; longest outage {} ms",
        parts.first().unwrap_or(&"?"),
        parts.get(1).unwrap_or(&"?"),
        parts.get(2).unwrap_or(&"?")
    );
    println!(
        "erlbridge RSS: {rss_start} KiB at start, {rss_end} KiB at end ({:.2}x)",
        rss_end as f64 / rss_start.max(1) as f64
    );
    Ok(())
}
