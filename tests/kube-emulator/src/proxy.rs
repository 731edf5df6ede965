//! An HTTP CONNECT proxy for the test bed, as companies put in front of their clusters: it
//! tunnels `CONNECT host:port` to the target (TCP_NODELAY on both sides), optionally checks
//! `Proxy-Authorization: Basic` (407 otherwise), answers anything but CONNECT with 405, and
//! records each tunnel (target, user, bytes each way) so a test can prove traffic went through
//! it. Like the emulator it can listen inside a network namespace; it then also dials from
//! there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::api::lock;

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// A tunnel the proxy carried (or carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// `host:port` as the CONNECT request named it.
    pub target: String,
    /// The user of the request's Proxy-Authorization, if any.
    pub user: Option<String>,
    /// Bytes from the client to the target so far.
    pub sent: u64,
    /// Bytes from the target to the client so far.
    pub received: u64,
    /// Whether it is still open.
    pub open: bool,
}

#[derive(Default)]
struct TunnelState {
    target: String,
    user: Option<String>,
    sent: AtomicU64,
    received: AtomicU64,
    open: AtomicBool,
}

#[derive(Default)]
struct Shared {
    credentials: Option<(String, String)>,
    netns: Option<String>,
    tunnels: Mutex<Vec<Arc<TunnelState>>>,
    refused: AtomicUsize,
}

/// A running proxy; clones share it. Lives as long as the tokio runtime it was started on.
#[derive(Clone)]
pub struct ConnectProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl ConnectProxy {
    /// Starts listening on `addr` (inside `netns` when given), requiring `credentials`
    /// (user, password) when given. Must be called within a tokio runtime.
    pub async fn start(
        addr: SocketAddr,
        netns: Option<&str>,
        credentials: Option<(&str, &str)>,
    ) -> std::io::Result<ConnectProxy> {
        let listener = crate::netns::bind(netns, addr)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            netns: netns.map(str::to_owned),
            ..Shared::default()
        });
        tokio::spawn(accept(listener, shared.clone()));
        Ok(ConnectProxy { shared, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://[user:password@]IP:PORT`, as `proxy-url` and HTTPS_PROXY take it (the
    /// credentials percent-encoded).
    pub fn url(&self) -> String {
        match &self.shared.credentials {
            Some((user, password)) => format!(
                "http://{}:{}@{}",
                percent_encode(user),
                percent_encode(password),
                self.addr
            ),
            None => format!("http://{}", self.addr),
        }
    }

    /// Every tunnel so far, oldest first.
    pub fn tunnels(&self) -> Vec<Tunnel> {
        lock(&self.shared.tunnels)
            .iter()
            .map(|t| Tunnel {
                target: t.target.clone(),
                user: t.user.clone(),
                sent: t.sent.load(Ordering::Relaxed),
                received: t.received.load(Ordering::Relaxed),
                open: t.open.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// How many requests it turned away (405, 407, 400, or 502 when the target was unreachable).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(client, &shared).await {
                debug!(%peer, error = %e, "proxy connection ended");
            }
        });
    }
}

/// A request head: method, target, headers (lower-cased names), and what followed it.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let mut chunk = [0u8; 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next(), request.next());
    let (Some(method), Some(target)) = (method, target) else {
        return Ok(None);
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        rest: buf[end + 4..].to_vec(),
    }))
}

/// The user of a `Basic` Proxy-Authorization, when it names the expected credentials.
fn authorized(head: &Head, credentials: &(String, String)) -> Option<String> {
    let value = head
        .headers
        .iter()
        .find(|(k, _)| k == "proxy-authorization")?
        .1
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == credentials.0 && password == credentials.1).then(|| user.to_owned())
}

async fn answer(client: &mut TcpStream, shared: &Shared, status: &str, extra: &str) {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    let response =
        format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = client.write_all(response.as_bytes()).await;
}

async fn handle(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some(head) = read_head(&mut client).await? else {
        answer(&mut client, shared, "400 Bad Request", "").await;
        return Ok(());
    };
    if head.method != "CONNECT" {
        answer(
            &mut client,
            shared,
            "405 Method Not Allowed",
            "Allow: CONNECT\r\n",
        )
        .await;
        return Ok(());
    }
    let user = match &shared.credentials {
        None => None,
        Some(credentials) => match authorized(&head, credentials) {
            Some(user) => Some(user),
            None => {
                let challenge = "Proxy-Authenticate: Basic realm=\"erlbridge test proxy\"\r\n";
                answer(
                    &mut client,
                    shared,
                    "407 Proxy Authentication Required",
                    challenge,
                )
                .await;
                return Ok(());
            }
        },
    };
    let target = match resolve(&head.target).await {
        Some(addr) => crate::netns::connect(shared.netns.clone(), addr).await,
        None => Err(std::io::Error::other("cannot resolve the target")),
    };
    let mut target = match target {
        Ok(stream) => stream,
        Err(e) => {
            info!(target = %head.target, error = %e, "proxy could not reach the target");
            answer(&mut client, shared, "502 Bad Gateway", "").await;
            return Ok(());
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let state = Arc::new(TunnelState {
        target: head.target.clone(),
        user,
        open: AtomicBool::new(true),
        ..TunnelState::default()
    });
    lock(&shared.tunnels).push(state.clone());
    info!(target = %head.target, "proxy tunnel opened");
    // Bytes the client sent right behind its request head belong to the target.
    target.write_all(&head.rest).await?;
    state.sent.fetch_add(
        u64::try_from(head.rest.len()).unwrap_or(0),
        Ordering::Relaxed,
    );
    let (client_read, client_write) = client.into_split();
    let (target_read, target_write) = target.into_split();
    let up = pump(client_read, target_write, &state.sent);
    let down = pump(target_read, client_write, &state.received);
    // A failure either way ends both (try_join drops the other half).
    let _ = tokio::try_join!(up, down);
    state.open.store(false, Ordering::Relaxed);
    Ok(())
}

/// Copies until end of stream, counting, then shuts the writer down.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }
}

/// Everything but RFC 3986's unreserved characters as `%XX`, as URL userinfo needs.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `IP:PORT` or `[IPv6]:PORT` as is, else a name looked up from here.
async fn resolve(target: &str) -> Option<SocketAddr> {
    if let Ok(addr) = target.parse() {
        return Some(addr);
    }
    tokio::net::lookup_host(target).await.ok()?.next()
}
