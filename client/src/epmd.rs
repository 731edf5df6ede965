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

/// A local stand-in for the epmd a pod does not run: answers PORT_PLEASE2 and NAMES for the
/// nodes it knows, so a local node that asks "where is app@10.244.1.8" (through the helper's
/// redirect of the pod's epmd port) learns the node's fixed distribution port. Serves only the
/// connections `admit` lets in (this user's). Stops when dropped.
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
    /// Listens on an ephemeral port of `ip` (a loopback address) and answers for `nodes` of
    /// `pod`, whose epmd address (`podIP:port`) a redirect of this user's sends here.
    pub async fn start(
        ip: std::net::IpAddr,
        nodes: Vec<Known>,
        pod: &str,
        addr: std::net::SocketAddr,
        admit: std::sync::Arc<dyn crate::owner::Admit>,
    ) -> std::io::Result<Responder> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let local = listener.local_addr()?;
        let gate = crate::owner::Listener {
            local,
            pod: addr,
            serves: format!(
                "pod {pod} port {} (erlbridge answers for its epmd)",
                addr.port()
            ),
        };
        let shared = std::sync::Arc::new((nodes, gate));
        let task = tokio::spawn(async move {
            while let Ok((mut conn, peer)) = listener.accept().await {
                let (shared, admit) = (shared.clone(), admit.clone());
                tokio::spawn(async move {
                    let (nodes, gate) = &*shared;
                    if admit.admit(peer, gate) {
                        let _ = answer(&mut conn, nodes, local.port()).await;
                    }
                });
            }
        });
        Ok(Responder { local, task })
    }
}

/// Reads one request and answers it as epmd would; anything else closes the connection.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    nodes: &[Known],
    own_port: u16,
) -> std::io::Result<()> {
    let len = conn.read_u16().await?;
    let mut request = vec![0; usize::from(len)];
    conn.read_exact(&mut request).await?;
    let reply = match request.split_first() {
        Some((122, name)) => match nodes.iter().find(|n| n.name.as_bytes() == name) {
            Some(node) => {
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
                reply
            }
            None => vec![119, 1],
        },
        Some((110, _)) => {
            let mut reply = u32::from(own_port).to_be_bytes().to_vec();
            for node in nodes {
                reply.extend_from_slice(
                    format!("name {} at port {}\n", node.name, node.port).as_bytes(),
                );
            }
            reply
        }
        _ => return Ok(()),
    };
    conn.write_all(&reply).await?;
    conn.shutdown().await
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
        let responder = Responder::start(
            "127.0.0.1".parse().unwrap(),
            known,
            "app-0",
            "10.244.1.8:4369".parse().unwrap(),
            crate::owner::OwnerOnly::new(tx),
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
