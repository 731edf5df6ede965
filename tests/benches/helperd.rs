//! Benchmark (needs root): helperd's AddMapping/RemoveMapping latency with 1, 100 and 1,000
//! live mappings, against the floor of one raw `nft -f -` element change in the same run, and
//! helperd's resident memory with 0 and 1,000 mappings. Prints figures; asserts nothing.

use std::time::{Duration, Instant};

use erlbridge_proto::v1 as pb;
use erlbridge_testbed::helperd::open_session;
use erlbridge_testbed::{Bins, Helperd, Workstation, require_root, rss_kib};

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
            adds.push(start.elapsed());
            let start = Instant::now();
            client
                .remove_mapping(pb::RemoveMappingRequest {
                    session_id: id,
                    pod_ip: "10.99.0.1".into(),
                    pod_port: 5555,
                })
                .await?;
            removes.push(start.elapsed());
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
    Ok(())
}
