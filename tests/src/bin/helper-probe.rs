//! helper-probe: a small client of erlbridge-helperd and of plain TCP, run by tests as an
//! unprivileged uid. Prints one JSON object per line so tests can read what happened.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use erlbridge_proto::v1 as pb;
use erlbridge_testbed::helperd::open_session;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

#[derive(Parser)]
struct Args {
    /// The helper's socket.
    #[arg(long, default_value = erlbridge_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the helper's WhoAmI answer.
    Whoami,
    /// Open a session, add mappings (POD_IP:PORT=LOCAL_PORT or =LOCAL_IP:PORT) and aliases,
    /// print each outcome, then hold the session until killed. With --reconnect, a session the
    /// helper ends (it restarted) is opened again and everything added again, as erlbridge
    /// does.
    Hold {
        #[arg(long = "map")]
        maps: Vec<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long)]
        reconnect: bool,
    },
    /// Open CONNECTIONS connections, PARALLEL at a time, each held HOLD_MS; with --call each
    /// makes one call first (whoami or list). Prints the count of each outcome.
    Storm {
        #[arg(long)]
        connections: u32,
        #[arg(long, default_value_t = 100)]
        parallel: u32,
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        #[arg(long, value_enum)]
        call: Option<StormCall>,
    },
    /// Open a session and add then remove a mapping, over and over, until the file UNTIL
    /// exists; print how many cycles ran and every failure.
    Churn {
        #[arg(long)]
        until: PathBuf,
        #[arg(long, default_value = "10.244.9.9:4369")]
        pod: String,
    },
    /// Print the sessions the helper shows this caller.
    Sessions,
    /// Send a flood of bad requests, then `quota + extra` adds; print counts per status code.
    Flood {
        #[arg(long)]
        quota: u32,
        #[arg(long)]
        extra: u32,
        /// A host address inside the allowed networks.
        #[arg(long)]
        host_addr: String,
    },
    /// Listen on ADDR; greet each connection with "hello from ADDR".
    Listen { addr: String },
    /// Listen on ADDR for benchmark traffic: each request is a u64 length (big-endian) and that
    /// many bytes, answered with one byte; a zero length closes the connection.
    Sink { addr: String },
    /// Listen on ADDR and relay every connection to TO, as any small TCP relay would (no
    /// check of who connects); print the listening address.
    Relay { addr: String, to: String },
    /// Connect to ADDR, send SEND (hex), read what comes back until the peer closes or
    /// TIMEOUT_MS passes, print it (hex and text) and whether the peer closed.
    Talk {
        addr: String,
        #[arg(long, default_value = "")]
        send: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Connect to ADDR and print the greeting; exit 1 when that fails.
    Connect {
        addr: String,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
}

/// The call each connection of a storm makes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StormCall {
    Whoami,
    List,
}

fn status_json(what: &str, status: &tonic::Status) -> serde_json::Value {
    json!({"request": what, "code": format!("{:?}", status.code()), "message": status.message()})
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            println!("{}", json!({"error": format!("{e:#}")}));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Cmd::Listen { addr } => {
            let listener = listen(&addr).await?;
            loop {
                let (mut conn, _) = listener.accept().await?;
                let greeting = format!("hello from {addr}\n");
                tokio::spawn(async move {
                    let _ = conn.write_all(greeting.as_bytes()).await;
                });
            }
        }
        Cmd::Sink { addr } => {
            let listener = listen(&addr).await?;
            loop {
                let (mut conn, _) = listener.accept().await?;
                conn.set_nodelay(true)?;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(mut left) = conn.read_u64().await {
                        if left == 0 {
                            break;
                        }
                        while left > 0 {
                            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                            match conn.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => left -= n as u64,
                            }
                        }
                        if conn.write_all(b"k").await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Cmd::Relay { addr, to } => {
            let listener = listen(&addr).await?;
            loop {
                let (mut conn, _) = listener.accept().await?;
                let to = to.clone();
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                });
            }
        }
        Cmd::Talk {
            addr,
            send,
            timeout_ms,
        } => {
            let request = hex_decode(&send)?;
            let mut conn = tokio::net::TcpStream::connect(&addr).await?;
            conn.write_all(&request).await?;
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            let closed = loop {
                match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                    Err(_) => break false,
                }
            };
            let hex: String = received.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "{}",
                json!({"addr": addr, "received": hex, "text": String::from_utf8_lossy(&received),
                       "closed": closed})
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Connect { addr, timeout_ms } => {
            let attempt = async {
                let mut conn = tokio::net::TcpStream::connect(&addr).await?;
                let mut text = String::new();
                conn.read_to_string(&mut text).await?;
                anyhow::Ok(text)
            };
            match tokio::time::timeout(Duration::from_millis(timeout_ms), attempt).await {
                Ok(Ok(text)) => {
                    println!("{}", json!({"connected": addr, "greeting": text.trim()}));
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Err(e)) => {
                    println!("{}", json!({"failed": addr, "error": e.to_string()}));
                    Ok(ExitCode::FAILURE)
                }
                Err(_) => {
                    println!("{}", json!({"failed": addr, "error": "timed out"}));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Storm {
            connections,
            parallel,
            hold_ms,
            call,
        } => storm(args.socket, connections, parallel, hold_ms, call).await,
        command => helper(args.socket, command).await,
    }
}

async fn helper(socket: PathBuf, command: Cmd) -> anyhow::Result<ExitCode> {
    let mut client = erlbridge_proto::connect(socket).await?;
    match command {
        Cmd::Whoami => {
            let r = match client.who_am_i(pb::WhoAmIRequest {}).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    println!("{}", status_json("whoami", &status));
                    return Ok(ExitCode::FAILURE);
                }
            };
            let caller = r.caller.unwrap_or_default();
            let policy = r.policy.unwrap_or_default();
            println!(
                "{}",
                json!({"uid": caller.uid, "gid": caller.gid, "groups": caller.groups,
                       "pid": caller.pid, "allowed": r.allowed, "refusal": r.refusal,
                       "version": r.helper_version, "api_version": r.api_version,
                       "max_rules_per_uid": policy.max_rules_per_uid})
            );
        }
        Cmd::Sessions => {
            let r = client
                .list_sessions(pb::ListSessionsRequest {})
                .await?
                .into_inner();
            for s in r.sessions {
                let maps: Vec<String> = s
                    .mappings
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{}={}:{}",
                            m.pod_ip, m.pod_port, m.local_ip, m.local_port
                        )
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"session": s.session_id, "uid": s.uid, "maps": maps, "aliases": s.aliases})
                );
            }
        }
        Cmd::Hold {
            maps,
            aliases,
            reconnect,
        } => {
            let mut events = match hold(&mut client, &maps, &aliases).await {
                Ok(events) => events,
                Err(status) => {
                    println!("{}", status_json("open", &status));
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("{}", json!({"ready": true}));
            loop {
                while events.next().await.is_some() {}
                if !reconnect {
                    break;
                }
                println!("{}", json!({"lost": true}));
                // The channel reconnects by itself; retry until the helper is back.
                events = loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(events) = hold(&mut client, &maps, &aliases).await {
                        break events;
                    }
                };
                println!("{}", json!({"restored": true}));
            }
        }
        Cmd::Churn { until, pod } => {
            let (id, _events) = open_session(&mut client, "churn").await?;
            let (pod_ip, pod_port) = split_addr(&pod);
            let (mut cycles, mut failures) = (0u64, Vec::new());
            while !until.exists() {
                let add = client
                    .add_mapping(pb::AddMappingRequest {
                        session_id: id,
                        pod_ip: pod_ip.clone(),
                        pod_port,
                        local_port: 40000,
                        local_ip: String::new(),
                    })
                    .await;
                let remove = client
                    .remove_mapping(pb::RemoveMappingRequest {
                        session_id: id,
                        pod_ip: pod_ip.clone(),
                        pod_port,
                    })
                    .await;
                for (what, result) in [("add", add.err()), ("remove", remove.err())] {
                    if let Some(status) = result {
                        failures.push(status_json(what, &status));
                    }
                }
                cycles += 1;
            }
            println!("{}", json!({"cycles": cycles, "failures": failures}));
        }
        Cmd::Flood {
            quota,
            extra,
            host_addr,
        } => {
            let (id, mut events) = open_session(&mut client, "flood").await?;
            let huge = "1".repeat(3 << 20);
            let map = |pod_ip: &str, pod_port, local_ip: &str, local_port| pb::AddMappingRequest {
                session_id: id,
                pod_ip: pod_ip.into(),
                pod_port,
                local_port,
                local_ip: local_ip.into(),
            };
            let mut requests = vec![
                map("10.244.1.8", 4369, "::1", 40000),
                map("fd00::8", 4369, "127.0.0.1", 40000),
                map("::ffff:10.244.1.8", 4369, "", 40000),
                map("10.244.1.8", 0, "", 40000),
                map("10.244.1.8", 65536, "", 40000),
                map("10.244.1.8", u32::MAX, "", 40000),
                map("10.244.1.8", 4369, "", 0),
                map("10.244.1.8", 4369, "", 99999),
                map(&huge, 4369, "", 40000),
                map("10.244.1.8", 4369, &huge, 40000),
                map("127.0.0.1", 4369, "", 40000),
                map("::1", 4369, "", 40000),
                map("0.0.0.0", 4369, "", 40000),
                map("224.0.0.1", 4369, "", 40000),
                map("169.254.1.1", 4369, "", 40000),
                map(&host_addr, 4369, "", 40000),
                map("8.8.8.8", 4369, "", 40000),
                map("10.244.1.8", 4369, "10.244.1.9", 40000),
                pb::AddMappingRequest {
                    session_id: id + 1000,
                    ..map("10.244.1.8", 4369, "", 40000)
                },
            ];
            let good = quota + extra;
            for n in 0..good {
                requests.push(map("10.244.1.8", 1 + n, "", 40000));
            }
            let mut codes = std::collections::BTreeMap::<String, u32>::new();
            for req in requests {
                let code = match client.add_mapping(req).await {
                    Ok(_) => "Ok".to_owned(),
                    Err(status) => format!("{:?}", status.code()),
                };
                *codes.entry(code).or_default() += 1;
            }
            let label = "x".repeat(100_000);
            let open = client.open_session(pb::OpenSessionRequest { label }).await;
            let code = open
                .err()
                .map(|s| format!("{:?}", s.code()))
                .unwrap_or_else(|| "Ok".into());
            *codes.entry(code).or_default() += 1;
            println!("{}", json!({"codes": codes}));
            println!("{}", json!({"ready": true}));
            while events.next().await.is_some() {}
        }
        Cmd::Listen { .. }
        | Cmd::Connect { .. }
        | Cmd::Sink { .. }
        | Cmd::Storm { .. }
        | Cmd::Relay { .. }
        | Cmd::Talk { .. } => {
            unreachable!("handled without the helper")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens a session on `client` and adds `maps` (POD_IP:PORT=LOCAL_PORT or =LOCAL_IP:PORT) and
/// `aliases` to it, printing each outcome; returns the session's stream.
async fn hold(
    client: &mut pb::helper_client::HelperClient<tonic::transport::Channel>,
    maps: &[String],
    aliases: &[String],
) -> Result<tonic::Streaming<pb::SessionEvent>, tonic::Status> {
    let (id, events) = open_session(client, "helper-probe").await?;
    println!("{}", json!({"session": id}));
    for map in maps {
        let (pod, local) = map.split_once('=').unwrap_or((map, ""));
        let (pod_ip, pod_port) = split_addr(pod);
        let (local_ip, local_port) = match local.rsplit_once(':') {
            Some(_) => split_addr(local),
            None => (String::new(), local.parse().unwrap_or(0)),
        };
        let req = pb::AddMappingRequest {
            session_id: id,
            pod_ip,
            pod_port,
            local_port,
            local_ip,
        };
        match client.add_mapping(req).await {
            Ok(_) => println!("{}", json!({"request": map, "ok": true})),
            Err(status) => println!("{}", status_json(map, &status)),
        }
    }
    for ip in aliases {
        let req = pb::AddAliasRequest {
            session_id: id,
            ip: ip.clone(),
        };
        match client.add_alias(req).await {
            Ok(_) => println!("{}", json!({"request": ip, "ok": true})),
            Err(status) => println!("{}", status_json(ip, &status)),
        }
    }
    Ok(events)
}

/// Opens `connections` connections to the helper, `parallel` at a time, each held `hold_ms`
/// (after one WhoAmI call with `call`), and prints how many ended which way: "Ok" or a gRPC
/// code for calls, "held" for connections held without a call, "connect failed" when the
/// connection could not be made.
async fn storm(
    socket: PathBuf,
    connections: u32,
    parallel: u32,
    hold_ms: u64,
    call: Option<StormCall>,
) -> anyhow::Result<ExitCode> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let (socket, next) = (socket.clone(), next.clone());
        workers.spawn(async move {
            let mut outcomes = std::collections::BTreeMap::<String, (u32, String)>::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < connections {
                let (outcome, message) = attempt(&socket, hold_ms, call).await;
                let entry = outcomes.entry(outcome).or_insert((0, message));
                entry.0 += 1;
            }
            outcomes
        });
    }
    let mut outcomes = std::collections::BTreeMap::<String, (u32, String)>::new();
    while let Some(done) = workers.join_next().await {
        for (outcome, (count, message)) in done? {
            outcomes.entry(outcome).or_insert((0, message)).0 += count;
        }
    }
    let counts: serde_json::Map<String, serde_json::Value> = outcomes
        .iter()
        .map(|(k, (n, _))| (k.clone(), json!(n)))
        .collect();
    let messages: serde_json::Map<String, serde_json::Value> = outcomes
        .into_iter()
        .map(|(k, (_, m))| (k, json!(m)))
        .collect();
    println!("{}", json!({"outcomes": counts, "messages": messages}));
    Ok(ExitCode::SUCCESS)
}

/// One connection of a storm: its outcome and the message that came with it.
async fn attempt(
    socket: &std::path::Path,
    hold_ms: u64,
    call: Option<StormCall>,
) -> (String, String) {
    let hold = Duration::from_millis(hold_ms);
    let Some(call) = call else {
        return match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => {
                tokio::time::sleep(hold).await;
                drop(stream);
                ("held".into(), String::new())
            }
            Err(e) => ("connect failed".into(), e.to_string()),
        };
    };
    let mut client = match erlbridge_proto::connect(socket).await {
        Ok(client) => client,
        Err(e) => {
            return (
                "connect failed".into(),
                format!("{:#}", anyhow::Error::new(e)),
            );
        }
    };
    let answer = match call {
        StormCall::Whoami => client.who_am_i(pb::WhoAmIRequest {}).await.map(drop),
        StormCall::List => client
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .map(drop),
    };
    let outcome = match answer {
        Ok(()) => ("Ok".into(), String::new()),
        Err(status) => (format!("{:?}", status.code()), status.message().to_owned()),
    };
    tokio::time::sleep(hold).await;
    outcome
}

/// "10.0.0.1:4369" or "[fd00::1]:4369" into address text and port.
fn split_addr(text: &str) -> (String, u32) {
    match text.rsplit_once(':') {
        Some((ip, port)) => (
            ip.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port.parse().unwrap_or(0),
        ),
        None => (text.to_owned(), 0),
    }
}

/// Binds `addr` and prints where it listens.
async fn listen(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "{}",
        json!({"listening": listener.local_addr()?.to_string()})
    );
    Ok(listener)
}

/// Bytes from hex text (`00016e`).
fn hex_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        anyhow::bail!("odd number of hex digits in {text:?}");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&text[i..i + 2], 16)?))
        .collect()
}
