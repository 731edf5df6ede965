//! The kernel's TCP socket table through NETLINK_SOCK_DIAG (inet_diag, what `ss` reads): the
//! owner of the socket that connected from a given source address and port. Any user may ask;
//! nothing is sent on the network.
//!
//! First an exact lookup for each destination the caller expects the socket to have dialed
//! (the listener itself, or the pod address a redirect rewrote); a socket whose destination is
//! neither (someone else's redirect) is then found in a dump of the connected sockets of the
//! family, matched on its source alone. Several sockets with that source and different owners
//! mean no answer.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// How long the kernel may take to answer (it answers at once; this only bounds a surprise).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The states of a socket whose connection was accepted and not yet torn down on its side.
fn connected() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

/// The uid owning the connected TCP socket whose source is `peer`; `dialed` are the
/// destinations it probably has. `None` when no such socket exists, or several with different
/// owners do.
pub fn find(peer: SocketAddr, dialed: &[SocketAddr]) -> io::Result<Option<u32>> {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut table = Table::open()?;
    for dst in dialed.iter().filter(|d| d.is_ipv4() == peer.is_ipv4()) {
        let found = table.ask(request(peer, Some(*dst)), false)?;
        if let Some(socket) = found.iter().find(|s| is_connected(s)) {
            return Ok(Some(socket.uid));
        }
    }
    let owners: BTreeSet<u32> = table
        .ask(request(peer, None), true)?
        .iter()
        .filter(|s| is_connected(s) && source(s) == peer)
        .map(|s| s.uid)
        .collect();
    Ok(match owners.len() {
        1 => owners.first().copied(),
        _ => None,
    })
}

fn is_connected(socket: &InetResponseHeader) -> bool {
    u32::from(socket.state) < 32 && connected().bits() & (1 << socket.state) != 0
}

fn source(socket: &InetResponseHeader) -> SocketAddr {
    SocketAddr::new(
        socket.socket_id.source_address,
        socket.socket_id.source_port,
    )
}

/// A lookup of the socket from `peer` to `dst`, or (`dst` none) a dump of the connected
/// sockets of `peer`'s family.
fn request(peer: SocketAddr, dst: Option<SocketAddr>) -> InetRequest {
    let mut socket_id = match peer {
        SocketAddr::V4(_) => SocketId::new_v4(),
        SocketAddr::V6(_) => SocketId::new_v6(),
    };
    if let Some(dst) = dst {
        socket_id.source_address = peer.ip();
        socket_id.source_port = peer.port();
        socket_id.destination_address = dst.ip();
        socket_id.destination_port = dst.port();
        // No cookie: the addresses identify the socket.
        socket_id.cookie = [0xff; 8];
    }
    InetRequest {
        family: if peer.is_ipv4() { AF_INET } else { AF_INET6 },
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: connected(),
        socket_id,
    }
}

/// A NETLINK_SOCK_DIAG socket.
struct Table(netlink_sys::Socket);

impl Table {
    fn open() -> io::Result<Table> {
        let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(i64::try_from(ANSWER_WITHIN.as_secs()).unwrap_or(1), 0),
        )?;
        Ok(Table(socket))
    }

    /// Sends `request` and reads the sockets of the answer: one (or none) for a lookup, every
    /// matching one for a dump.
    fn ask(&mut self, request: InetRequest, dump: bool) -> io::Result<Vec<InetResponseHeader>> {
        let mut header = NetlinkHeader::default();
        header.flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST
        };
        let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.0.send(&bytes, 0)?;

        let mut found = Vec::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let size = self.0.recv(&mut &mut buffer[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        found.push(response.header);
                        if !dump {
                            return Ok(found);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(error) => {
                        return match error.code.map(|c| -c.get()) {
                            // No such socket, or an acknowledgement.
                            None | Some(libc::ENOENT) => Ok(found),
                            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                        };
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                // Messages are aligned to 4 bytes.
                offset += (length + 3) & !3;
            }
            if !dump {
                return Ok(found);
            }
        }
    }
}
