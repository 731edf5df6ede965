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
    /// print each outcome, then hold the session until killed.
    Hold {
        #[arg(long = "map")]
        maps: Vec<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
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
    /// Connect to ADDR and print the greeting; exit 1 when that fails.
    Connect {
        addr: String,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
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
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!(
                "{}",
                json!({"listening": listener.local_addr()?.to_string()})
            );
            loop {
                let (mut conn, _) = listener.accept().await?;
                let greeting = format!("hello from {addr}\n");
                tokio::spawn(async move {
                    let _ = conn.write_all(greeting.as_bytes()).await;
                });
            }
        }
        Cmd::Sink { addr } => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!(
                "{}",
                json!({"listening": listener.local_addr()?.to_string()})
            );
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
        command => helper(args.socket, command).await,
    }
}

async fn helper(socket: PathBuf, command: Cmd) -> anyhow::Result<ExitCode> {
    let mut client = erlbridge_proto::connect(socket).await?;
    match command {
        Cmd::Whoami => {
            let r = client.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
            let caller = r.caller.unwrap_or_default();
            println!(
                "{}",
                json!({"uid": caller.uid, "gid": caller.gid, "groups": caller.groups,
                       "pid": caller.pid, "allowed": r.allowed, "refusal": r.refusal,
                       "version": r.helper_version, "api_version": r.api_version})
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
        Cmd::Hold { maps, aliases } => {
            let (id, mut events) = match open_session(&mut client, "helper-probe").await {
                Ok(opened) => opened,
                Err(status) => {
                    println!("{}", status_json("open", &status));
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("{}", json!({"session": id}));
            for map in maps {
                let (pod, local) = map.split_once('=').unwrap_or((&map, ""));
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
                    Err(status) => println!("{}", status_json(&map, &status)),
                }
            }
            for ip in aliases {
                match client
                    .add_alias(pb::AddAliasRequest {
                        session_id: id,
                        ip: ip.clone(),
                    })
                    .await
                {
                    Ok(_) => println!("{}", json!({"request": ip, "ok": true})),
                    Err(status) => println!("{}", status_json(&ip, &status)),
                }
            }
            println!("{}", json!({"ready": true}));
            while events.next().await.is_some() {}
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
        Cmd::Listen { .. } | Cmd::Connect { .. } | Cmd::Sink { .. } => {
            unreachable!("handled without the helper")
        }
    }
    Ok(ExitCode::SUCCESS)
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
