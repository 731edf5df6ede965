//! The socket: binding it with the right owner and mode, and the accept loop. Each new
//! connection's peer is checked at once, and the connection is served, answered once and
//! closed, or closed without a word, so that no caller can make the helper hold more
//! connections (descriptors, memory) than its caps allow. Running out of descriptors anyway
//! makes the loop back off instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::connection::{self, CallService, Lane, Refuse};
use crate::policy::{Caller, Connections, Peer};

/// Why the socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A step of binding failed.
    #[error("cannot {step} {path}")]
    Bind {
        /// What was being done.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A non-socket file stands where the socket goes.
    #[error("{0} exists and is not a socket; remove it or configure another `socket` path")]
    NotASocket(PathBuf),
}

/// Binds the socket at `path`: parent directory created if missing, a stale socket replaced,
/// owner root, group `gid`, mode 0660 — or 0666 when `open_to_all` (uids listed in
/// allowed_uids need not be in the group; the helper checks every caller itself).
pub fn bind(
    path: &Path,
    gid: Option<u32>,
    open_to_all: bool,
) -> Result<StdUnixListener, ServeError> {
    let fail = |step, source| ServeError::Bind {
        step,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("set the mode of the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| fail("remove the stale socket", e))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("inspect", e)),
    }
    let listener = StdUnixListener::bind(path).map_err(|e| fail("bind", e))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(|e| fail("chown", e))?;
    }
    let mode = if open_to_all { 0o666 } else { 0o660 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("set the mode of", e))?;
    info!(socket = %path.display(), mode = format_args!("{mode:o}"), gid, "listening");
    Ok(listener)
}

/// What becomes of a new connection, as the caller of [`serve`] decides it.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Served by the service until it closes or idles; counted against the caps meanwhile.
    Serve,
    /// Its first call goes to the service (which refuses it, or answers WhoAmI), then it is
    /// closed.
    AnswerOnce,
    /// Its first call gets this status, then it is closed.
    Refuse(Status),
}

/// Connections being answered once and closed, at most. Past that, a refused connection is
/// closed without a word, so a flood of them costs next to nothing.
pub const REFUSING_AT_ONCE: usize = 32;
/// Of those, how many one uid may take, so one uid's flood of refused connections leaves the
/// others room to hear why they are refused.
const REFUSING_PER_UID: usize = 4;
/// How long a refused connection may take to make the call its refusal answers.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How often the loop gives memory back after connections closed.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(5);
/// Descriptors the helper needs besides one per connection: the socket, the runtime's,
/// stdio, and the pipes of an `nft` or `ip` it runs.
pub const RESERVED_DESCRIPTORS: usize = 64;
/// How often, at most, the loop logs what it refuses or drops in a flood.
const TALLY_EVERY: Duration = Duration::from_secs(10);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts connections on `listener` until `shutdown` completes: `decide` says what becomes of
/// each (from its caller and the connections already served); admitted ones are served by
/// `service` and closed after `idle` without a call in progress. On shutdown, every connection
/// is dropped.
pub async fn serve(
    listener: StdUnixListener,
    idle: Duration,
    decide: impl Fn(&Caller, Connections) -> Verdict,
    service: impl CallService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listen_error = |source| ServeError::Bind {
        step: "listen on",
        path: PathBuf::from("the socket"),
        source,
    };
    listener.set_nonblocking(true).map_err(listen_error)?;
    let listener = UnixListener::from_std(listener).map_err(listen_error)?;
    let open = Arc::new(Mutex::new(Open::default()));
    let refusing = Arc::new(Mutex::new(Open::default()));
    let mut tasks = JoinSet::new();
    let mut tally = Tally::default();
    let mut closed_since_give_back = 0usize;
    let mut give_back = tokio::time::interval(GIVE_BACK_EVERY);
    let mut backoff = Backoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next() => {
                closed_since_give_back += 1;
                continue;
            }
            _ = give_back.tick() => {
                // A flood's connections leave freed memory scattered through the heap; hand
                // it back once they are gone, so the helper returns near its baseline.
                if closed_since_give_back > 0 {
                    closed_since_give_back = 0;
                    crate::process::give_back_memory();
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) if out_of_resources(&e) => {
                // Waiting connections stay queued in the socket's backlog; accepting again at
                // once would only spin.
                let pause = backoff.next();
                warn!(error = %e, pause_ms = pause.as_millis(), "cannot accept connections: out of descriptors or memory; pausing");
                tokio::time::sleep(pause).await;
                continue;
            }
            Err(e) => {
                debug!(error = %e, "a connection failed before it was accepted");
                continue;
            }
        };
        let caller = match crate::peer::credentials(&stream) {
            Ok(caller) => caller,
            Err(e) => {
                debug!(error = %e, "cannot read a new connection's credentials; closing it");
                continue;
            }
        };
        let peer = Peer {
            conn: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            caller,
        };
        let span = info_span!(
            "connection",
            conn = peer.conn,
            uid = peer.caller.uid,
            pid = peer.caller.pid
        );
        let counts = lock(&open).counts(peer.caller.uid);
        let verdict = decide(&peer.caller, counts);
        if let Verdict::Serve = verdict {
            let slot = Counted::take(&open, peer.caller.uid);
            let lane = Lane::Admitted { idle };
            spawn(&mut tasks, span, stream, peer, lane, service.clone(), slot);
            continue;
        }
        let room = lock(&refusing).counts(peer.caller.uid);
        if room.of_uid >= REFUSING_PER_UID || room.total >= REFUSING_AT_ONCE {
            tally.note(
                peer.caller.uid,
                "closed at once: too many refusals in progress",
            );
            continue;
        }
        let slot = Counted::take(&refusing, peer.caller.uid);
        let lane = Lane::AnswerOnce {
            within: ANSWER_WITHIN,
        };
        match verdict {
            Verdict::Refuse(status) => {
                tally.note(peer.caller.uid, status.message());
                spawn(&mut tasks, span, stream, peer, lane, Refuse(status), slot);
            }
            _ => spawn(&mut tasks, span, stream, peer, lane, service.clone(), slot),
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Answers the first call of every connection with `status` and closes it, until `shutdown`
/// completes: what a helper that could not start does with the socket systemd passed it.
pub async fn refuse_every_call(
    listener: StdUnixListener,
    status: Status,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let decide = |_: &Caller, _| Verdict::AnswerOnce;
    // No connection is admitted, so no idle timeout applies.
    serve(listener, Duration::ZERO, decide, Refuse(status), shutdown).await
}

/// Serves one connection as a task of the loop, holding `slot` until it closes.
fn spawn(
    tasks: &mut JoinSet<()>,
    span: tracing::Span,
    stream: UnixStream,
    peer: Peer,
    lane: Lane,
    service: impl CallService,
    slot: impl Send + 'static,
) {
    tasks.spawn(
        async move {
            debug!(?lane, "connection accepted");
            connection::serve(stream, peer, lane, service).await;
            debug!("connection closed");
            drop(slot);
        }
        .instrument(span),
    );
}

/// Connections open now (admitted ones, or those being refused), per uid and in total.
#[derive(Debug, Default)]
struct Open {
    per_uid: HashMap<u32, usize>,
    total: usize,
}

impl Open {
    fn counts(&self, uid: u32) -> Connections {
        Connections {
            of_uid: self.per_uid.get(&uid).copied().unwrap_or(0),
            total: self.total,
        }
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place in an [`Open`] count, given back when it closes.
struct Counted {
    open: Arc<Mutex<Open>>,
    uid: u32,
}

impl Counted {
    fn take(open: &Arc<Mutex<Open>>, uid: u32) -> Counted {
        let mut counts = lock(open);
        *counts.per_uid.entry(uid).or_default() += 1;
        counts.total += 1;
        Counted {
            open: open.clone(),
            uid,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = lock(&self.open);
        counts.total -= 1;
        if let Some(n) = counts.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                // No entry for a uid with nothing open, so the map stays as small as the caps.
                counts.per_uid.remove(&self.uid);
            }
        }
    }
}

/// Whether a failed accept means the helper ran out of descriptors or memory.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Pauses after failed accepts: 10 ms, doubling to a second.
#[derive(Debug, Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.0.map_or(Duration::from_millis(10), |p| {
            (p * 2).min(Duration::from_secs(1))
        });
        self.0 = Some(pause);
        pause
    }

    fn reset(&mut self) {
        self.0 = None;
    }
}

/// Refusals and drops during a flood, logged as a count at most every [`TALLY_EVERY`] instead
/// of one line each.
#[derive(Debug, Default)]
struct Tally {
    since: Option<Instant>,
    count: u64,
}

impl Tally {
    fn note(&mut self, uid: u32, what: &str) {
        self.count += 1;
        if self.since.is_some_and(|t| t.elapsed() < TALLY_EVERY) {
            return;
        }
        warn!(
            uid,
            refused = self.count,
            reason = what,
            "connection refused"
        );
        self.since = Some(Instant::now());
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_told_from_a_caller_that_gave_up() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            assert!(!out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
    }

    #[test]
    fn pauses_double_to_a_second_and_start_over_after_an_accept() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..9).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(10));
    }
}
