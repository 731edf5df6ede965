//! Whose connection is it: every listener erlbridge opens on this host (the forwards of pod
//! ports, the epmd stand-ins) serves only connections whose peer socket belongs to the uid
//! erlbridge runs as. A loopback port is open to every local user (`ss -ltn` shows it to
//! anyone), so without this check another user of a shared host would reach a production node
//! through the forward of someone who holds the rights to it, with only the cookie in between,
//! and spend that person's API credentials on each try.
//!
//! The owner of the connecting socket comes from the kernel's socket table ([`diag`], through
//! NETLINK_SOCK_DIAG), looked up by the socket's own address pair: its source address and port
//! (as the accepted connection's peer address shows them) and the destination it dialed. In
//! nat mode the helper's DNAT rewrote packets, not sockets, so that destination is the pod
//! address the listener stands for, not the listener's; otherwise the listener itself. A
//! connection whose owner cannot be found that way is refused.
//! Each refused uid is reported once per run ([`OwnerOnly`]), so a flood cannot flood the
//! output; the check happens before anything is spent on the connection (no port-forward).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

mod diag;

pub use diag::find as owner_of;

/// One of erlbridge's listeners, as an admission decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Where it listens.
    pub local: SocketAddr,
    /// The pod address this user's redirect sends here in nat mode (a connection brought by
    /// that redirect names it as its destination).
    pub pod: SocketAddr,
    /// What it serves, for a person: `pod app-0 port 4369`.
    pub serves: String,
}

/// Decides, at accept, whether a listener serves a connection.
pub trait Admit: Send + Sync + 'static {
    /// Whether the connection from `peer` (its source address and port) accepted on
    /// `listener` may be served. A refused connection is closed at once by the caller.
    fn admit(&self, peer: SocketAddr, listener: &Listener) -> bool;
}

/// A refused connection, reported once per uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The owner of the connecting socket; `None` when it could not be found.
    pub uid: Option<u32>,
    /// The uid erlbridge serves.
    pub owner: u32,
    /// The listener it tried.
    pub listener: Listener,
}

/// The admission of every listener erlbridge opens: connections of this process's uid only.
/// Each uid refused (and "owner unknown") is sent to `report` the first time only.
#[derive(Debug)]
pub struct OwnerOnly {
    uid: u32,
    reported: Mutex<BTreeSet<Option<u32>>>,
    report: UnboundedSender<Refused>,
}

impl OwnerOnly {
    /// Admits the connections of this process's effective uid; refusals go to `report`.
    pub fn new(report: UnboundedSender<Refused>) -> Arc<OwnerOnly> {
        OwnerOnly::for_uid(nix::unistd::geteuid().as_raw(), report)
    }

    /// Admits the connections of `uid`.
    pub fn for_uid(uid: u32, report: UnboundedSender<Refused>) -> Arc<OwnerOnly> {
        Arc::new(OwnerOnly {
            uid,
            reported: Mutex::new(BTreeSet::new()),
            report,
        })
    }

    fn refuse(&self, uid: Option<u32>, listener: &Listener) {
        let first = self
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid);
        if first {
            let _ = self.report.send(Refused {
                uid,
                owner: self.uid,
                listener: listener.clone(),
            });
        }
    }
}

impl Admit for OwnerOnly {
    fn admit(&self, peer: SocketAddr, listener: &Listener) -> bool {
        let found = owner_of(peer, &[listener.local, listener.pod]);
        let uid = match found {
            Ok(uid) => uid,
            Err(e) => {
                debug!(%peer, error = %e, "cannot read the kernel's socket table");
                None
            }
        };
        if uid == Some(self.uid) {
            return true;
        }
        debug!(%peer, ?uid, listener = %listener.local, "refused a connection");
        self.refuse(uid, listener);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(local: SocketAddr) -> Listener {
        Listener {
            local,
            pod: "10.244.1.8:4369".parse().unwrap(),
            serves: "pod app-0 port 4369".into(),
        }
    }

    #[test]
    fn own_connections_are_admitted_and_others_reported_once() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = server.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_accepted, peer) = server.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(OwnerOnly::for_uid(me, tx).admit(peer, &listener(local)));
        assert!(rx.try_recv().is_err(), "nothing to report");

        // The same connection, for a bridge of another uid: refused, said once.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let other = OwnerOnly::for_uid(me + 1, tx);
        for _ in 0..3 {
            assert!(!other.admit(peer, &listener(local)));
        }
        let refused = rx.try_recv().expect("one report");
        assert_eq!((refused.uid, refused.owner), (Some(me), me + 1));
        assert!(rx.try_recv().is_err(), "reported once, not per connection");
    }

    #[test]
    fn a_socket_is_found_by_its_source_and_the_destination_it_dialed() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = server.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(local).unwrap();
        let (_accepted, peer) = server.accept().unwrap();
        let me = Some(nix::unistd::geteuid().as_raw());
        let elsewhere: SocketAddr = "10.9.9.9:4369".parse().unwrap();
        // The pod address first (nat mode's redirect), then the listener: either finds it.
        assert_eq!(owner_of(peer, &[elsewhere, local]).unwrap(), me);
        // A socket that dialed neither (another user's own redirect) is not found.
        assert_eq!(owner_of(peer, &[elsewhere]).unwrap(), None);
    }

    #[test]
    fn a_peer_with_no_socket_is_refused() {
        // No socket has this source port: nobody owns it.
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let me = nix::unistd::geteuid().as_raw();
        assert!(!OwnerOnly::for_uid(me, tx).admit(peer, &listener(local)));
        assert_eq!(rx.try_recv().expect("reported").uid, None);
    }
}
