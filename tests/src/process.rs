//! Child processes that die with the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child whose stdout lines can be awaited. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Spawned {
    /// Starts `cmd` with stdout captured line by line (stderr goes where `cmd` says: the test
    /// log by default).
    pub fn start(cmd: Command) -> anyhow::Result<Spawned> {
        Spawned::launch(cmd, false)
    }

    /// The same, keeping stderr's lines too ([`Spawned::errors`]) while copying them to the test
    /// log.
    pub fn start_capturing(cmd: Command) -> anyhow::Result<Spawned> {
        Spawned::launch(cmd, true)
    }

    fn launch(mut cmd: Command, capture: bool) -> anyhow::Result<Spawned> {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        if capture {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let kept = errors.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    if let Ok(mut kept) = kept.lock() {
                        kept.push(line);
                    }
                }
            });
        }
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Spawned {
            child,
            lines,
            seen: Vec::new(),
            errors,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Waits up to `timeout` for a stdout line satisfying `matches`, and returns it.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "no matching line within {timeout:?}; the child printed {:?} (exit: {:?})",
                    self.seen,
                    self.child.try_wait().ok().flatten()
                ),
            }
        }
    }

    /// Reads stdout lines for `duration` and returns them (they join [`Spawned::seen`]).
    pub fn lines_for(&mut self, duration: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + duration;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            self.seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Every stderr line so far (when started with [`Spawned::start_capturing`]).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Waits up to `timeout` for the child to exit and returns its exit code (or -signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                use std::os::unix::process::ExitStatusExt;
                return Ok(status
                    .code()
                    .unwrap_or_else(|| -status.signal().unwrap_or(0)));
            }
            if std::time::Instant::now() > deadline {
                bail!("still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory in KiB (0 when it cannot be read).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How many TCP sockets process `pid` holds in the LISTEN state (its forwards, for erlbridge).
pub fn listening_sockets(pid: i32) -> usize {
    listening_addrs(pid).len()
}

/// The addresses of the TCP sockets process `pid` holds in the LISTEN state: what `ss -ltn`
/// shows any local user, here tied to the process.
pub fn listening_addrs(pid: i32) -> Vec<std::net::SocketAddr> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st is the fourth field; 0A is LISTEN. The inode is the tenth.
            let listening =
                fields.get(3) == Some(&"0A") && fields.get(9).is_some_and(|i| inodes.contains(*i));
            listening.then(|| proc_net_addr(fields.get(1)?)).flatten()
        })
        .collect()
}

/// An address as /proc/net/tcp{,6} prints it: hex words in host order, then the port.
fn proc_net_addr(text: &str) -> Option<std::net::SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::swap_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip: std::net::IpAddr = match words.as_slice() {
        [a] => std::net::Ipv4Addr::from(*a).into(),
        [a, b, c, d] => {
            let bits = (u128::from(*a) << 96)
                | (u128::from(*b) << 64)
                | (u128::from(*c) << 32)
                | u128::from(*d);
            std::net::Ipv6Addr::from(bits).into()
        }
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_net_addresses_are_read() {
        assert_eq!(
            super::proc_net_addr("0100007F:9C4B"),
            Some("127.0.0.1:40011".parse().unwrap())
        );
        assert_eq!(
            super::proc_net_addr("00000000000000000000000001000000:1111"),
            Some("[::1]:4369".parse().unwrap())
        );
    }
}
