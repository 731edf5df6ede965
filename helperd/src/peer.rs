//! Who is on the other end of a connection, from the kernel: SO_PEERCRED for uid, gid and pid,
//! SO_PEERGROUPS for the supplementary groups. Requests never say who sent them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::net::UnixStream;

use crate::policy::Caller;

/// Reads the credentials of the process that connected `stream`, as they were when it
/// connected.
pub fn credentials(stream: &UnixStream) -> io::Result<Caller> {
    let cred = stream.peer_cred()?;
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(stream.as_raw_fd())?,
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_come_from_the_kernel() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let caller = credentials(&a).expect("credentials");
        assert_eq!(caller.uid, nix::unistd::getuid().as_raw());
        assert_eq!(caller.pid, std::process::id());
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .expect("groups")
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut seen = caller.groups.clone();
        mine.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, mine);
    }
}
