//! The process itself: what it inherited, how many files it may open, and the memory it gives
//! back. Like Firecracker's jailer, helperd starts clean: nothing a parent left open reaches
//! the `nft` and `ip` it runs as root.

use std::io;
use std::os::fd::RawFd;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Why the open-file limit does not fit the configured connections.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The hard limit is below what the configuration needs.
    #[error(
        "max_connections = {max_connections} needs up to {need} open files, but the helper may \
         open only {hard} (LimitNOFILE in erlbridge-helperd.service); lower max_connections in \
         helperd.toml, or raise LimitNOFILE (sudo systemctl edit erlbridge-helperd)"
    )]
    TooLow {
        /// The configured connection cap.
        max_connections: u32,
        /// The descriptors that cap needs.
        need: u64,
        /// The hard limit.
        hard: u64,
    },
    /// The limit could not be read or raised.
    #[error("cannot read or raise the open-file limit")]
    Change(#[source] nix::Error),
}

/// Closes every inherited descriptor but stdin, stdout, stderr and `keep` (the socket systemd
/// passed), and marks `keep` close-on-exec (systemd passes it without), so the programs
/// helperd runs inherit none of them.
///
/// Call it first thing in `main`, before any thread starts or any library opens a file.
#[allow(unsafe_code)]
pub fn close_inherited_descriptors(keep: Option<RawFd>) -> io::Result<()> {
    let keep = keep
        .and_then(|fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2);
    let ranges = match keep {
        Some(fd) => vec![(3, fd - 1), (fd + 1, u32::MAX)],
        None => vec![(3, u32::MAX)],
    };
    for (first, last) in ranges.into_iter().filter(|(first, last)| first <= last) {
        // SAFETY: nothing in the process owns a descriptor in these ranges: it has no thread
        // yet and has opened nothing but stdio and `keep`, which lie outside them.
        let rc = unsafe { libc::close_range(first, last, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(fd) = keep {
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: F_SETFD only changes the descriptor's flags; `fd` is the listener's.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes sure the helper may open `need` files, raising its soft limit towards the hard one.
pub fn reserve_open_files(need: u64, max_connections: u32) -> Result<(), LimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LimitError::Change)?;
    if hard < need {
        return Err(LimitError::TooLow {
            max_connections,
            need,
            hard,
        });
    }
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).map_err(LimitError::Change)?;
    }
    Ok(())
}

/// Hands memory the allocator holds but no longer uses back to the kernel. After a flood of
/// connections, their freed buffers lie scattered through the heap, where the allocator would
/// otherwise keep them for good.
#[allow(unsafe_code)]
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks and only releases free pages; it
    // touches no memory the program uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
