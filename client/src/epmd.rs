//! EPMD, as far as erlbridge needs it: the NAMES request, whose reply lists the nodes that
//! run in a pod and their distribution ports, so no fixed ERL_PORT has to be known; and
//! PORT_PLEASE2, whose reply carries a node's distribution protocol version (what the epmd
//! module answers a local node with, in the no-helper mode).
//!
//! A request is a big-endian u16 length and a body; NAMES_REQ is the single byte 110. The
//! reply is a u32 (epmd's own port, ignored: through a forward it is not ours) followed by
//! lines `name <Name> at port <Port>\n` until epmd closes the connection. PORT_PLEASE2_REQ is
//! 122 and the alive name; PORT2_RESP is 119, a result byte (non-zero: no such node), then the
//! port (u16), node type, protocol, highest and lowest version (u16 each), name and extra.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// NAMES_REQ, framed.
pub const NAMES_REQUEST: [u8; 3] = [0, 1, 110];

/// A node registered with epmd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The alive name (`app` of `app@host`).
    pub name: String,
    /// Its distribution port.
    pub port: u16,
}

/// A NAMES reply that makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("epmd's NAMES reply is malformed: {0}")]
pub struct Malformed(pub String);

/// Why a pod's epmd could not tell its nodes.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The pod refused the port: nothing listens there.
    #[error("nothing listens there")]
    Refused,
    /// The reply makes no sense.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// epmd runs, but no node registered with it.
    #[error("epmd answers, but no Erlang node is registered with it")]
    NoNodes,
    /// The pod runs its node without epmd, but nothing names the node.
    #[error(
        "its spec says its node runs without epmd ({0}), but neither RELEASE_NODE nor -name \
         gives the node's name; give it with --node-name NAME"
    )]
    Unnamed(String),
}

/// What PORT_PLEASE2 says of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// Its distribution port.
    pub port: u16,
    /// The highest distribution protocol version it speaks.
    pub version: u16,
}

/// Frames a PORT_PLEASE2 request for `alive`.
pub fn port_please_request(alive: &str) -> Result<Vec<u8>, Malformed> {
    let len = u16::try_from(alive.len() + 1)
        .map_err(|_| Malformed(format!("the node name {alive} is too long")))?;
    let mut request = len.to_be_bytes().to_vec();
    request.push(122);
    request.extend_from_slice(alive.as_bytes());
    Ok(request)
}

/// Parses a PORT2_RESP; `None` when epmd knows no such node.
pub fn parse_port2(reply: &[u8]) -> Result<Option<PortInfo>, Malformed> {
    let short = || {
        Malformed(format!(
            "a PORT2_RESP of {} bytes is too short",
            reply.len()
        ))
    };
    match reply {
        [119, 0, rest @ ..] => {
            let field = |at: usize| -> Result<u16, Malformed> {
                let bytes = rest.get(at..at + 2).ok_or_else(short)?;
                Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
            };
            Ok(Some(PortInfo {
                port: field(0)?,
                version: field(4)?,
            }))
        }
        [119, _, ..] => Ok(None),
        [other, ..] => Err(Malformed(format!(
            "a PORT_PLEASE2 reply starts with {other}, not 119"
        ))),
        [] => Err(short()),
    }
}

/// Asks the epmd at the other end of `stream` about node `alive`.
pub async fn port_please<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    alive: &str,
) -> std::io::Result<Result<Option<PortInfo>, Malformed>> {
    let request = match port_please_request(alive) {
        Ok(request) => request,
        Err(e) => return Ok(Err(e)),
    };
    stream.write_all(&request).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(parse_port2(&reply))
}

/// A node a [`Responder`] answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its alive name.
    pub name: String,
    /// Its distribution port.
    pub port: u16,
    /// Its distribution protocol version.
    pub version: u16,
}

/// What a [`Responder`] stands in for: a pod's epmd, at the address `redirected` (`podIP:port`)
/// a redirect of this user's sends to it.
#[derive(Clone)]
pub struct Stand {
    /// The pod.
    pub pod: String,
    /// The pod address local nodes dial for its epmd.
    pub redirected: std::net::SocketAddr,
    /// The nodes it answers for.
    pub nodes: Vec<Known>,
    /// Where anything else goes: the pod's own epmd (its port), through a port-forward of its
    /// own; `None` for a pod that runs no epmd.
    pub epmd: Option<(crate::k8s::Kube, u16)>,
}

/// erlbridge's stand-in for a pod's epmd, on a loopback port the helper's redirect of the
/// pod's epmd address leads to (nat mode): a local node that asks "where is app@10.244.1.8"
/// (PORT_PLEASE2) or which nodes run there (NAMES) is answered at once from what erlbridge
/// learnt when it attached the pod, so a new local connection costs one port-forward, its
/// distribution connection's. Any other request (another node's name, another kind) goes to
/// the pod's epmd, which answers as it would; a pod without epmd gets epmd's "no such node".
/// Serves only the connections `admit` lets in (this user's). Stops when dropped.
#[derive(Debug)]
pub struct Responder {
    /// Where it listens.
    pub local: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Listens on an ephemeral port of `ip` (a loopback address) and stands in as `stand`
    /// says; accept failures go to `failures`, as a forward's do.
    pub async fn start(
        ip: std::net::IpAddr,
        stand: Stand,
        admit: std::sync::Arc<dyn crate::owner::Admit>,
        failures: tokio::sync::mpsc::UnboundedSender<crate::forward::Failed>,
    ) -> std::io::Result<Responder> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let local = listener.local_addr()?;
        let port = stand.redirected.port();
        let gate = std::sync::Arc::new(crate::owner::Listener {
            local,
            pod: stand.redirected,
            serves: format!(
                "pod {} port {port} (erlbridge answers for its epmd)",
                stand.pod
            ),
        });
        let pod = stand.pod.clone();
        let stand = std::sync::Arc::new(stand);
        let serve = move |conn, _, _| {
            let stand = stand.clone();
            async move {
                let _ = serve(conn, &stand).await;
            }
        };
        let task = tokio::spawn(crate::forward::accept_loop(
            listener, pod, port, gate, admit, failures, serve,
        ));
        Ok(Responder { local, task })
    }
}

/// How long a local node may take to send its request once connected (it sends it at once).
const REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads one request and answers it from what `stand` knows, or has the pod's epmd answer it.
async fn serve(mut conn: tokio::net::TcpStream, stand: &Stand) -> std::io::Result<()> {
    let read = async {
        let len = conn.read_u16().await?;
        let mut request = vec![0; usize::from(len)];
        conn.read_exact(&mut request).await?;
        Ok::<_, std::io::Error>((len, request))
    };
    let (len, request) = tokio::time::timeout(REQUEST_WITHIN, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if let Some(reply) = answer(&request, &stand.nodes, stand.redirected.port()) {
        conn.write_all(&reply).await?;
        return conn.shutdown().await;
    }
    match &stand.epmd {
        Some((kube, port)) => {
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&request);
            if let Err(e) = crate::forward::relay(conn, kube, &stand.pod, *port, &framed).await {
                tracing::debug!(pod = %stand.pod, error = %e, "an epmd request could not be forwarded");
            }
            Ok(())
        }
        None if request.first() == Some(&122) => {
            conn.write_all(&[119, 1]).await?;
            conn.shutdown().await
        }
        None => Ok(()),
    }
}

/// The answer to `request` (the body, without its length) from what is known of `nodes`, as
/// epmd would give it (`epmd_port` is the port the asker dialed): PORT_PLEASE2 for a known
/// node, and NAMES. `None` for anything else.
fn answer(request: &[u8], nodes: &[Known], epmd_port: u16) -> Option<Vec<u8>> {
    match request.split_first()? {
        (122, name) => {
            let node = nodes.iter().find(|n| n.name.as_bytes() == name)?;
            let mut reply = vec![119, 0];
            reply.extend_from_slice(&node.port.to_be_bytes());
            // A normal node speaking TCP/IPv4 (the protocol field is not read for IPv6).
            reply.extend_from_slice(&[77, 0]);
            reply.extend_from_slice(&node.version.to_be_bytes());
            reply.extend_from_slice(&5u16.to_be_bytes());
            let name = node.name.as_bytes();
            reply.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
            reply.extend_from_slice(name);
            reply.extend_from_slice(&0u16.to_be_bytes());
            Some(reply)
        }
        (110, _) => {
            let mut reply = u32::from(epmd_port).to_be_bytes().to_vec();
            for node in nodes {
                reply.extend_from_slice(
                    format!("name {} at port {}\n", node.name, node.port).as_bytes(),
                );
            }
            Some(reply)
        }
        _ => None,
    }
}

/// Parses a whole NAMES reply.
pub fn parse_names(reply: &[u8]) -> Result<Vec<Registered>, Malformed> {
    let body = reply.get(4..).ok_or_else(|| {
        Malformed(format!(
            "{} bytes, shorter than its 4-byte header",
            reply.len()
        ))
    })?;
    let text = std::str::from_utf8(body).map_err(|_| Malformed("not text".to_owned()))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let rest = line
                .strip_prefix("name ")
                .ok_or_else(|| Malformed(format!("unexpected line \"{line}\"")))?;
            let (name, port) = rest
                .rsplit_once(" at port ")
                .ok_or_else(|| Malformed(format!("unexpected line \"{line}\"")))?;
            let port = port
                .trim()
                .parse()
                .map_err(|_| Malformed(format!("bad port in \"{line}\"")))?;
            Ok(Registered {
                name: name.to_owned(),
                port,
            })
        })
        .collect()
}

/// Asks the epmd at the other end of `stream` for its nodes.
pub async fn names<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<Vec<Registered>, Malformed>> {
    stream.write_all(&NAMES_REQUEST).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(parse_names(&reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_replies_are_parsed() {
        let mut reply = 4369u32.to_be_bytes().to_vec();
        reply.extend_from_slice(b"name app at port 9100\nname other_node at port 41233\n");
        assert_eq!(
            parse_names(&reply),
            Ok(vec![
                Registered {
                    name: "app".into(),
                    port: 9100
                },
                Registered {
                    name: "other_node".into(),
                    port: 41233
                },
            ])
        );
        assert_eq!(parse_names(&4369u32.to_be_bytes()), Ok(vec![]));
        assert!(parse_names(b"ab").is_err());
        let mut bad = 0u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"name app at port x\n");
        assert!(parse_names(&bad).is_err());
    }

    #[test]
    fn port2_replies_are_parsed() {
        assert_eq!(
            port_please_request("app").unwrap(),
            [0, 4, 122, b'a', b'p', b'p']
        );
        let mut reply = vec![119, 0];
        reply.extend_from_slice(&9100u16.to_be_bytes());
        reply.extend_from_slice(&[77, 0]);
        reply.extend_from_slice(&6u16.to_be_bytes());
        reply.extend_from_slice(&5u16.to_be_bytes());
        reply.extend_from_slice(&[0, 3, b'a', b'p', b'p', 0, 0]);
        assert_eq!(
            parse_port2(&reply),
            Ok(Some(PortInfo {
                port: 9100,
                version: 6
            }))
        );
        assert_eq!(parse_port2(&[119, 1]), Ok(None));
        assert!(parse_port2(&[119, 0, 1]).is_err());
        assert!(parse_port2(&[120, 0]).is_err());
        assert!(parse_port2(&[]).is_err());
    }

    #[tokio::test]
    async fn the_responder_answers_as_epmd_does() {
        let known = vec![Known {
            name: "app".into(),
            port: 9100,
            version: 6,
        }];
        let (tx, _refused) = tokio::sync::mpsc::unbounded_channel();
        let (failures, _failed) = tokio::sync::mpsc::unbounded_channel();
        let stand = Stand {
            pod: "app-0".into(),
            redirected: "10.244.1.8:4369".parse().unwrap(),
            nodes: known,
            epmd: None,
        };
        let responder = Responder::start(
            "127.0.0.1".parse().unwrap(),
            stand,
            crate::owner::OwnerOnly::new(tx),
            failures,
        )
        .await
        .unwrap();
        let ask = |alive: &'static str| async move {
            let mut conn = tokio::net::TcpStream::connect(responder.local)
                .await
                .unwrap();
            port_please(&mut conn, alive).await.unwrap()
        };
        assert_eq!(
            ask("app").await,
            Ok(Some(PortInfo {
                port: 9100,
                version: 6
            }))
        );
        assert_eq!(ask("other").await, Ok(None));
        let mut conn = tokio::net::TcpStream::connect(responder.local)
            .await
            .unwrap();
        assert_eq!(
            names(&mut conn).await.unwrap(),
            Ok(vec![Registered {
                name: "app".into(),
                port: 9100
            }])
        );
    }

    #[test]
    fn the_stand_in_answers_what_it_knows_and_passes_on_the_rest() {
        let nodes = [Known {
            name: "app".into(),
            port: 9100,
            version: 6,
        }];
        let reply = answer(&port_please_request("app").unwrap()[2..], &nodes, 4369).unwrap();
        assert_eq!(
            parse_port2(&reply),
            Ok(Some(PortInfo {
                port: 9100,
                version: 6
            }))
        );
        // NAMES says the epmd port the asker dialed (erl_epmd checks it), then the nodes.
        let names = answer(&[110], &nodes, 4369).unwrap();
        assert_eq!(&names[..4], &4369u32.to_be_bytes());
        assert_eq!(&names[4..], b"name app at port 9100\n");
        // Another node's name, or another request: the pod's epmd answers those.
        assert_eq!(
            answer(&port_please_request("other").unwrap()[2..], &nodes, 4369),
            None
        );
        assert_eq!(answer(&[100], &nodes, 4369), None);
        assert_eq!(answer(&[], &nodes, 4369), None);
    }

    #[tokio::test]
    async fn names_asks_with_names_req() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let epmd = tokio::spawn(async move {
            let mut request = [0u8; 3];
            server.read_exact(&mut request).await.expect("request");
            let mut reply = 1u32.to_be_bytes().to_vec();
            reply.extend_from_slice(b"name app at port 9100\n");
            server.write_all(&reply).await.expect("reply");
            request
        });
        let nodes = names(&mut client).await.expect("io").expect("parsed");
        assert_eq!(
            nodes,
            vec![Registered {
                name: "app".into(),
                port: 9100
            }]
        );
        assert_eq!(epmd.await.expect("epmd"), NAMES_REQUEST);
    }
}
