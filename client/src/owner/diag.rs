//! The kernel's TCP socket table through NETLINK_SOCK_DIAG (inet_diag, what `ss` reads): the
//! owner of the socket that connected from a given source address and port. Any user may ask;
//! nothing is sent on the network.
//!
//! The socket is looked up by its own address pair: the source the accepted connection's peer
//! shows, and each destination it may have dialed (the listener itself, or the pod address a
//! redirect of this user's rewrote: NAT rewrites packets, not sockets). Each is one hash
//! lookup in the kernel, whatever the number of sockets on the host; a socket that dialed
//! anything else (another user's own redirect) is not found, so its connection is refused as
//! one whose owner is unknown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// How long the kernel may take to answer (it answers at once; this only bounds a surprise).
const ANSWER_WITHIN: Duration = Duration::from_millis(100);

/// The states of a socket whose connection was accepted and not yet torn down on its side.
fn connected() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

/// The uid owning the connected TCP socket from `peer` to one of `dialed`; `None` when there
/// is none (it closed already, or dialed elsewhere).
pub fn find(peer: SocketAddr, dialed: &[SocketAddr]) -> io::Result<Option<u32>> {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut table = Table::open()?;
    for dst in dialed.iter().filter(|d| d.is_ipv4() == peer.is_ipv4()) {
        if let Some(socket) = table.lookup(peer, *dst)?
            && is_connected(&socket)
        {
            return Ok(Some(socket.uid));
        }
    }
    Ok(None)
}

fn is_connected(socket: &InetResponseHeader) -> bool {
    u32::from(socket.state) < 32 && connected().bits() & (1 << socket.state) != 0
}

/// A lookup of the socket from `peer` to `dst`.
fn request(peer: SocketAddr, dst: SocketAddr) -> InetRequest {
    let mut socket_id = match peer {
        SocketAddr::V4(_) => SocketId::new_v4(),
        SocketAddr::V6(_) => SocketId::new_v6(),
    };
    socket_id.source_address = peer.ip();
    socket_id.source_port = peer.port();
    socket_id.destination_address = dst.ip();
    socket_id.destination_port = dst.port();
    // No cookie: the addresses identify the socket.
    socket_id.cookie = [0xff; 8];
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
            &nix::sys::time::TimeVal::new(
                0,
                i64::try_from(ANSWER_WITHIN.as_micros()).unwrap_or(100_000),
            ),
        )?;
        Ok(Table(socket))
    }

    /// The socket from `peer` to `dst`, if there is one.
    fn lookup(
        &mut self,
        peer: SocketAddr,
        dst: SocketAddr,
    ) -> io::Result<Option<InetResponseHeader>> {
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            SockDiagMessage::InetRequest(request(peer, dst)).into(),
        );
        packet.header.flags = NLM_F_REQUEST;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.0.send(&bytes, 0)?;
        // The kernel answers a lookup with one message: the socket, or an error (ENOENT: none).
        let mut buffer = vec![0; 8 * 1024];
        let size = self.0.recv(&mut &mut buffer[..], 0)?;
        let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[..size])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                Ok(Some(response.header))
            }
            NetlinkPayload::Error(error) => match error.code.map(|c| -c.get()) {
                None | Some(libc::ENOENT) => Ok(None),
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            },
            _ => Ok(None),
        }
    }
}
