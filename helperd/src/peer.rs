//! Who is on the other end of a connection, from the kernel: SO_PEERCRED for uid, gid and pid,
//! SO_PEERGROUPS for the supplementary groups. Requests never say who sent them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use crate::policy::Caller;

/// The caller of a request, as the service sees it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Unique per accepted connection; sessions are bound to it.
    pub conn: u64,
    /// Who connected.
    pub caller: Caller,
}

/// An accepted connection with its peer's credentials, taken once at accept.
#[derive(Debug)]
pub struct PeerStream {
    inner: UnixStream,
    peer: Peer,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl PeerStream {
    /// Reads the peer's credentials off a freshly accepted connection.
    pub fn accept(inner: UnixStream) -> io::Result<PeerStream> {
        let cred = inner.peer_cred()?;
        let groups = peer_groups(inner.as_raw_fd())?;
        let caller = Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        };
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        Ok(PeerStream {
            inner,
            peer: Peer { conn, caller },
        })
    }
}

/// The supplementary groups of the process that connected to `fd` (SO_PEERGROUPS, Linux 4.13+).
#[allow(unsafe_code)]
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(io::Error::other)?;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_come_from_the_kernel() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let stream = PeerStream::accept(a).expect("credentials");
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(stream.peer.caller.uid, me);
        assert_eq!(stream.peer.caller.pid, std::process::id());
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .expect("groups")
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut seen = stream.peer.caller.groups.clone();
        mine.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, mine);
    }
}
