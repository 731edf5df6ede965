//! `pods/NAME/portforward` over WebSocket, framed as the kubelet's `v4.channel.k8s.io`: for the
//! i-th requested port, channel 2i carries data and 2i+1 errors; the first frame on each is the
//! port as u16 little-endian; every frame is one channel byte then payload. Each port's stream
//! is relayed to 127.0.0.1:PORT inside the pod's network namespace (so a listener bound only to
//! the pod IP is unreachable, as with a real kubelet), or to [::1]:PORT when that is refused (as
//! kubelets do for IPv6-only listeners). The connection closes once every pod-side stream has
//! ended.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::api::{Emulator, forbid_unless, not_found, status};
use crate::auth::Caller;

/// The subprotocol the emulated kubelet speaks.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// Where a pod's ports are dialed: 127.0.0.1 inside its namespace, or its IP from here.
fn target(desc: &crate::PodDesc, port: u16) -> (Option<String>, SocketAddr) {
    match (&desc.netns, desc.ip) {
        (Some(ns), _) => (
            Some(ns.clone()),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ),
        (None, Some(ip)) => (None, SocketAddr::new(ip, port)),
        (None, None) => (None, SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
    }
}

/// Dials a pod's port: the target, then [::1] when 127.0.0.1 refused.
async fn dial(netns: Option<String>, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    match crate::netns::connect(netns.clone(), addr).await {
        Err(e)
            if e.kind() == io::ErrorKind::ConnectionRefused && addr.ip() == Ipv4Addr::LOCALHOST =>
        {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()));
            crate::netns::connect(netns, v6).await.map_err(|_| e)
        }
        other => other,
    }
}

/// `ports=4369%2C5555` (or repeated `ports=`) into port numbers.
fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("ports=") else {
            continue;
        };
        for p in value.replace("%2C", ",").replace("%2c", ",").split(',') {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => return Err(format!("invalid port value {p:?}: ports must be 1..65535")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be specified".to_owned());
    }
    Ok(ports)
}

/// The route handler.
pub async fn handler(
    State(emu): State<Emulator>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(r) = forbid_unless(&caller, "create", "pods/portforward", "", &ns, Some(&name)) {
        return r;
    }
    let Some(desc) = emu.pod(&ns, &name) else {
        return not_found("pods", &name);
    };
    if desc.phase != "Running" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "unable to upgrade connection: pod {name} is not running (phase {})",
                desc.phase
            ),
            Value::Null,
        );
    }
    let ports = match ports(query.as_deref().unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e, Value::Null),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "this API server forwards ports over WebSocket ({PROTOCOL}) only, as kube-rs \
                     uses it; SPDY (kubectl port-forward) is not emulated: {e}"
                ),
                Value::Null,
            );
        }
    };
    let drop_signal = emu.inner.forwards.subscribe();
    upgrade
        .protocols([PROTOCOL])
        .on_upgrade(move |socket| async move {
            emu.inner.live_forwards.fetch_add(1, Ordering::Relaxed);
            info!(pod = %name, ?ports, "port-forward opened");
            relay(socket, desc, ports, drop_signal).await;
            emu.inner.live_forwards.fetch_sub(1, Ordering::Relaxed);
            debug!(pod = %name, "port-forward closed");
        })
}

enum FromPod {
    Data(u8, Vec<u8>),
    Ended,
}

fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(payload);
    Message::Binary(bytes.into())
}

async fn relay(
    mut socket: WebSocket,
    pod: crate::PodDesc,
    ports: Vec<u16>,
    mut drop_signal: tokio::sync::watch::Receiver<u64>,
) {
    for (i, port) in ports.iter().enumerate() {
        let data = u8::try_from(2 * i).unwrap_or(u8::MAX);
        for channel in [data, data + 1] {
            if socket
                .send(frame(channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<FromPod>(16);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut ended = 0;
    for (i, port) in ports.iter().enumerate() {
        let data = u8::try_from(2 * i).unwrap_or(u8::MAX);
        let (netns, addr) = target(&pod, *port);
        match dial(netns, addr).await {
            Ok(stream) => {
                let (mut read, write) = stream.into_split();
                writers.push(Some(write));
                let tx = tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx
                                    .send(FromPod::Data(data, buf[..n].to_vec()))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send(FromPod::Ended).await;
                }));
            }
            Err(e) => {
                let message = format!(
                    "an error occurred forwarding {port} -> {port}: error forwarding port {port} to pod {}, \
                     uid : failed to connect to localhost:{port} inside namespace: {e}",
                    pod.name
                );
                let _ = socket.send(frame(data + 1, message.as_bytes())).await;
                writers.push(None);
                ended += 1;
            }
        }
    }
    drop(tx);
    while ended < ports.len() {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 => {
                    let index = usize::from(bytes[0] / 2);
                    if bytes[0] % 2 == 0
                        && let Some(Some(writer)) = writers.get_mut(index)
                        && writer.write_all(&bytes[1..]).await.is_err()
                    {
                        writers[index] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            from_pod = rx.recv() => match from_pod {
                Some(FromPod::Data(channel, bytes)) => {
                    if socket.send(frame(channel, &bytes)).await.is_err() {
                        break;
                    }
                }
                Some(FromPod::Ended) => ended += 1,
                None => break,
            },
            // A fault on demand: cut the connection without a closing handshake.
            _ = drop_signal.changed() => {
                for reader in &readers {
                    reader.abort();
                }
                return;
            }
        }
    }
    if ended == ports.len() {
        let _ = socket.send(Message::Close(None)).await;
    }
    for reader in readers {
        reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_kube_rs_and_kubectl_send_them() {
        assert_eq!(ports("ports=4369%2C5555"), Ok(vec![4369, 5555]));
        assert_eq!(ports("&ports=4369"), Ok(vec![4369]));
        assert_eq!(ports("ports=80&ports=81"), Ok(vec![80, 81]));
        assert!(ports("ports=0").is_err());
        assert!(ports("ports=70000").is_err());
        assert!(ports("").is_err());
    }
}
