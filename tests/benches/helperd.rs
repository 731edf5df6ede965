//! Benchmark (needs root): helperd's AddMapping/RemoveMapping latency with 1, 100 and 1,000
//! live mappings, against the floor of one raw `nft -f -` element change in the same run, and
//! helperd's resident memory with 0 and 1,000 mappings; then a legitimate caller's latency
//! with and without a connection flood running (20,000 attempts from a refused uid, 2,000 from
//! an allowed one, 30 more uids holding 20 connections each for 3 s), and helperd's memory
//! before, during and after it. Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use erlbridge_proto::v1 as pb;
use erlbridge_testbed::helperd::{ALLOWED_STORM, REFUSED_STORM, open_session};
use erlbridge_testbed::{Bins, Helperd, Spawned, User, Workstation, require_root, rss_kib};

const SAMPLES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn raw_nft(ws: &Workstation, script: &str) {
    ws.ns.nft(script).expect("nft");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"])?;
    let ws = Workstation::new()?;
    let helperd = Helperd::start(&ws, &bins, "max_rules_per_uid = 5000")?;
    let pid = helperd.pid().unwrap_or(0);
    let rss_empty = rss_kib(pid);

    let mut client = erlbridge_proto::connect(&helperd.socket).await?;
    let (id, events) = open_session(&mut client, "bench").await?;
    let pod = |n: u32| format!("10.244.{}.{}", n / 250, 1 + n % 250);

    println!(
        "helperd mapping latency ({SAMPLES} add+remove cycles of one mapping beside the live ones)"
    );
    println!("baseline: the same change by hand, one `ip netns exec ... nft -f -` run (the floor)");
    println!(
        "{:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>6} {:>6}",
        "live",
        "add p50",
        "add p99",
        "rm p50",
        "rm p99",
        "raw add50",
        "p99",
        "raw rm50",
        "p99",
        "add/r",
        "rm/r"
    );
    let mut live = 0u32;
    for target in [1u32, 100, 1000] {
        while live < target {
            client
                .add_mapping(pb::AddMappingRequest {
                    session_id: id,
                    pod_ip: pod(live),
                    pod_port: 4369,
                    local_port: 40000,
                    local_ip: String::new(),
                })
                .await?;
            live += 1;
        }
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        let (mut raw_adds, mut raw_removes) = (Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            let (add, remove) = cycle(&mut client, id).await?;
            adds.push(add);
            removes.push(remove);
            // The floor: the same element changes by hand, one `nft -f -` run each.
            let start = Instant::now();
            raw_nft(
                &ws,
                "add element inet erlbridge dnat4 { 1 . 10.98.0.1 . 5555 : 127.0.0.1 . 40001 }\n",
            );
            raw_adds.push(start.elapsed());
            let start = Instant::now();
            raw_nft(
                &ws,
                "delete element inet erlbridge dnat4 { 1 . 10.98.0.1 . 5555 }\n",
            );
            raw_removes.push(start.elapsed());
        }
        let (add50, add99) = summary(adds);
        let (rm50, rm99) = summary(removes);
        let (raw_add50, raw_add99) = summary(raw_adds);
        let (raw_rm50, raw_rm99) = summary(raw_removes);
        println!(
            "{live:>6} | {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {:>5.2}x {:>5.2}x",
            ms(add50),
            ms(add99),
            ms(rm50),
            ms(rm99),
            ms(raw_add50),
            ms(raw_add99),
            ms(raw_rm50),
            ms(raw_rm99),
            add50.as_secs_f64() / raw_add50.as_secs_f64(),
            rm50.as_secs_f64() / raw_rm50.as_secs_f64(),
        );
    }
    let rss_full = rss_kib(pid);
    println!(
        "helperd RSS: {rss_empty} KiB with no mapping, {rss_full} KiB with {live} mappings ({:.2}x)",
        rss_full as f64 / rss_empty.max(1) as f64
    );
    drop(events);
    drop(helperd);
    flood(&ws, &bins).await
}

type Client = erlbridge_proto::v1::helper_client::HelperClient<tonic::transport::Channel>;

/// One add and one remove of a mapping beside the live ones: how long each took.
async fn cycle(client: &mut Client, id: u64) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    client
        .add_mapping(pb::AddMappingRequest {
            session_id: id,
            pod_ip: "10.99.0.1".into(),
            pod_port: 5555,
            local_port: 40001,
            local_ip: String::new(),
        })
        .await?;
    let add = start.elapsed();
    let start = Instant::now();
    client
        .remove_mapping(pb::RemoveMappingRequest {
            session_id: id,
            pod_ip: "10.99.0.1".into(),
            pod_port: 5555,
        })
        .await?;
    Ok((add, start.elapsed()))
}

/// `SAMPLES` add+remove cycles: the add and the remove latencies.
async fn cycles(client: &mut Client, id: u64) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        let (add, remove) = cycle(client, id).await?;
        adds.push(add);
        removes.push(remove);
    }
    Ok((adds, removes))
}

/// A legitimate caller's latency with and without a connection flood, and helperd's memory.
async fn flood(ws: &Workstation, bins: &Bins) -> anyhow::Result<()> {
    // allowed_uids opens the socket to all, so the refused uid reaches helperd itself.
    let helperd = Helperd::start(ws, bins, "allowed_uids = [61099]")?;
    let pid = helperd.pid().unwrap_or(0);
    let mut client = erlbridge_proto::connect(&helperd.socket).await?;
    let (id, events) = open_session(&mut client, "bench").await?;
    let quiet = cycles(&mut client, id).await?;
    let rss_before = rss_kib(pid);

    let socket = helperd.socket.display().to_string();
    let storm = |user: &User, args: &[&str]| -> anyhow::Result<Spawned> {
        let mut argv = vec![bins.path("helper-probe"), "--socket".into(), socket.clone()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        ws.spawn_as(user, &argv)
    };
    let mut storms = vec![
        storm(&User::outsider(61003), REFUSED_STORM)?,
        storm(&User::member(61002), ALLOWED_STORM)?,
    ];
    // Enough uids holding connections to reach the total cap (max_connections = 512).
    for uid in 61100..61130 {
        storms.push(storm(
            &User::member(uid),
            &[
                "storm",
                "--connections",
                "20",
                "--parallel",
                "20",
                "--hold-ms",
                "3000",
                "--call",
                "whoami",
            ],
        )?);
    }
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, most2) = (stop.clone(), most.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                most2.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        (stop, most, thread)
    };
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    let mut running = true;
    while running {
        let (a, r) = cycles(&mut client, id).await?;
        adds.extend(a);
        removes.extend(r);
        running = storms.iter_mut().any(|s| {
            s.wait_line(Duration::ZERO, |l| l.contains("outcomes"))
                .is_err()
                && s.wait_exit(Duration::ZERO).is_err()
        });
    }
    let (stop, most, thread) = sampler;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = thread.join();
    let rss_during = most.load(std::sync::atomic::Ordering::Relaxed);
    let rss_right_after = rss_kib(pid);
    // helperd gives freed memory back every 5 s once connections have closed.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let rss_after = rss_kib(pid);

    println!();
    println!(
        "a legitimate caller's add+remove during a connection flood (20,000 attempts from a refused \
         uid, 2,000 from an allowed one, 30 uids holding 20 each); baseline: the same caller with \
         no flood, same run"
    );
    println!(
        "{:>10} | {:>9} {:>9} | {:>9} {:>9} | {:>7}",
        "", "add p50", "add p99", "rm p50", "rm p99", "samples"
    );
    for (name, (adds, removes)) in [("no flood", quiet), ("flood", (adds, removes))] {
        let n = adds.len();
        let (add50, add99) = summary(adds);
        let (rm50, rm99) = summary(removes);
        println!(
            "{name:>10} | {:>7.2}ms {:>7.2}ms | {:>7.2}ms {:>7.2}ms | {n:>7}",
            ms(add50),
            ms(add99),
            ms(rm50),
            ms(rm99),
        );
    }
    println!(
        "helperd RSS: {rss_before} KiB before the flood, at most {rss_during} KiB during, \
         {rss_right_after} KiB as it ends, {rss_after} KiB 11 s later ({:+} KiB from before)",
        rss_after as i64 - rss_before as i64
    );
    for storm in &storms[..2] {
        if let Some(line) = storm.seen().iter().find(|l| l.contains("outcomes")) {
            println!("storm: {line}");
        }
    }
    drop(events);
    Ok(())
}
