//! Opening sockets inside another network namespace. `setns` changes only the calling thread,
//! so each call runs on a fresh thread that ends afterwards (never on a pooled one); the socket
//! keeps the namespace it was created in.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a new thread that has entered the named namespace (`/run/netns/NAME`).
pub fn within<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Connects to `addr` from inside `netns` (or from here when `None`), with TCP_NODELAY.
pub async fn connect(netns: Option<String>, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let dial = move || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    };
    let stream = match netns {
        Some(ns) => tokio::task::spawn_blocking(move || within(&ns, dial))
            .await
            .map_err(io::Error::other)??,
        None => tokio::task::spawn_blocking(dial)
            .await
            .map_err(io::Error::other)??,
    };
    tokio::net::TcpStream::from_std(stream)
}

/// Binds a listener on `addr` inside `netns` (or here when `None`).
pub fn bind(netns: Option<&str>, addr: SocketAddr) -> io::Result<TcpListener> {
    let listen = move || {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    match netns {
        Some(ns) => within(ns, listen),
        None => listen(),
    }
}
