//! The workstation: a namespace like a developer's machine, where helperd, the client and the
//! local Erlang node run. Its default route leads to a neighbour that never answers, so a
//! connection to a pod address fails unless erlbridge redirects it: the control every
//! end-to-end test checks first.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::netns::Netns;
use crate::process::Spawned;
use crate::user::User;

/// The workstation's own IPv4 address: inside the helper's default allowed networks, so the
/// policy's host-address check is what protects it.
pub const HOST_V4: &str = "10.250.0.1";
/// The workstation's own IPv6 address.
pub const HOST_V6: &str = "fd00:250::1";

/// The workstation's IPv4 default route: to a neighbour that never answers.
const DEFAULT_ROUTE: &[&str] = &[
    "ip",
    "route",
    "add",
    "default",
    "via",
    "10.250.0.2",
    "dev",
    "uplink",
];

/// Runs `cmd` (which runs `argv`) to completion: (exit code, stdout, stderr).
pub(crate) fn run_to_end(mut cmd: Command, argv: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {argv:?}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Packets to one address, dropped in the workstation until this is dropped.
#[derive(Debug)]
pub struct PacketDrop {
    ns: String,
    table: String,
}

impl Drop for PacketDrop {
    fn drop(&mut self) {
        // Gone already when the workstation went first.
        let _ = crate::netns::run(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "nft",
            "delete",
            "table",
            "inet",
            &self.table,
        ]));
    }
}

/// A workstation namespace and a scratch directory every test user can read.
#[derive(Debug)]
pub struct Workstation {
    /// The namespace.
    pub ns: Netns,
    scratch: Scratch,
}

/// The scratch directory: the workstation's own, or the standing test bed's.
#[derive(Debug)]
enum Scratch {
    Owned(tempfile::TempDir),
    Attached(PathBuf),
}

impl Workstation {
    /// Creates the namespace with a default route (IPv4 and IPv6) that leads nowhere.
    pub fn new() -> anyhow::Result<Workstation> {
        let ns = Netns::create("ws")?;
        for argv in [
            &[
                "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "void",
            ][..],
            &["ip", "link", "set", "uplink", "up"],
            &["ip", "link", "set", "void", "up"],
            &[
                "ip",
                "addr",
                "add",
                &format!("{HOST_V4}/24"),
                "dev",
                "uplink",
            ],
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{HOST_V6}/64"),
                "dev",
                "uplink",
                "nodad",
            ],
            DEFAULT_ROUTE,
            &[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:250::2",
                "dev",
                "uplink",
            ],
        ] {
            ns.run(argv)?;
        }
        let scratch = tempfile::Builder::new().prefix("eb-ws-").tempdir()?;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))?;
        Ok(Workstation {
            ns,
            scratch: Scratch::Owned(scratch),
        })
    }

    /// The workstation another process made (the standing test bed's, see
    /// [`crate::standing`]): namespace `ns` and scratch directory `scratch`, both left alone
    /// when this is dropped.
    pub fn attach(ns: &str, scratch: &Path) -> anyhow::Result<Workstation> {
        Ok(Workstation {
            ns: Netns::attach(ns)?,
            scratch: Scratch::Attached(scratch.to_path_buf()),
        })
    }

    /// Removes the IPv4 default route (connect() to a pod address then finds no route), or
    /// puts it back.
    pub fn set_default_route(&self, present: bool) -> anyhow::Result<()> {
        if present {
            self.ns.run(DEFAULT_ROUTE)?;
        } else {
            self.ns.run(&["ip", "route", "del", "default"])?;
        }
        Ok(())
    }

    /// The scratch directory (readable by every test user).
    pub fn scratch(&self) -> &Path {
        match &self.scratch {
            Scratch::Owned(dir) => dir.path(),
            Scratch::Attached(path) => path,
        }
    }

    /// A home directory owned by `user`, created on first use.
    pub fn home(&self, user: &User) -> anyhow::Result<PathBuf> {
        let home = self.scratch().join(format!("home-{}", user.uid));
        if !home.exists() {
            std::fs::create_dir(&home)?;
            std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid))?;
        }
        Ok(home)
    }

    /// A command running `argv` in the workstation as `user`.
    pub fn command_as(&self, user: &User, argv: &[&str]) -> anyhow::Result<std::process::Command> {
        let home = self.home(user)?;
        let wrapped = user.wrap(&home.display().to_string(), argv);
        let wrapped: Vec<&str> = wrapped.iter().map(String::as_str).collect();
        Ok(self.ns.command(&wrapped))
    }

    /// Starts `argv` in the workstation as `user`.
    pub fn spawn_as(&self, user: &User, argv: &[&str]) -> anyhow::Result<Spawned> {
        Spawned::start(self.command_as(user, argv)?)
    }

    /// Runs `argv` in the workstation as `user` to completion: (exit code, stdout, stderr).
    pub fn run_as(&self, user: &User, argv: &[&str]) -> anyhow::Result<(i32, String, String)> {
        run_to_end(self.command_as(user, argv)?, argv)
    }

    /// Drops every packet the workstation sends to `addr` while the returned value lives (an
    /// nftables table of its own, removed on drop): connections to it hang instead of being
    /// refused, as behind a VPN that is down. The API server, for the tests of bounded waits:
    /// `let _down = ws.drop_packets_to(cluster.api_addr())?;`
    pub fn drop_packets_to(&self, addr: SocketAddr) -> anyhow::Result<PacketDrop> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let table = format!("eb-drop-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let family = if addr.is_ipv4() { "ip" } else { "ip6" };
        self.ns.nft(&format!(
            "table inet {table} {{\n chain output {{\n type filter hook output priority 0; \
             policy accept;\n {family} daddr {} tcp dport {} drop\n }}\n}}\n",
            addr.ip(),
            addr.port()
        ))?;
        Ok(PacketDrop {
            ns: self.ns.name().to_owned(),
            table,
        })
    }

    /// Starts `argv` in the workstation as root.
    pub fn spawn_root(&self, argv: &[&str]) -> anyhow::Result<Spawned> {
        Spawned::start(self.ns.command(argv))
    }

    /// Runs the future `make` returns on a fresh thread inside the workstation's namespace (with
    /// its own runtime), so every socket it opens is the workstation's, as a user's would be.
    pub fn block_on<F, T>(&self, make: impl FnOnce() -> F + Send + 'static) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.ns.name());
        std::thread::spawn(move || -> anyhow::Result<T> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(make()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the workstation thread panicked"))?
    }

    /// Starts a hidden local Erlang node as `user`, evaluates `expr` on it, and returns the
    /// printed result. `extra` goes on erl's command line (e.g. `-kernel inetrc ...`).
    pub fn erl_eval(
        &self,
        user: &User,
        cookie: &str,
        expr: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("local{}x{n}@127.0.0.1", std::process::id());
        let argv = crate::erlang::eval_argv(&name, cookie, expr, extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (_, out, err) = self.run_as(user, &argv)?;
        crate::erlang::parse_result(&out).map_err(|e| anyhow::anyhow!("{e} (stderr: {err})"))
    }

    /// The command lines of every process in the workstation, as `ps` shows them to any
    /// local user.
    pub fn command_lines(&self) -> Vec<String> {
        self.ns
            .pids()
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .collect()
    }

    /// The helper's table as `nft` prints it, or `None` when there is no such table.
    pub fn helper_table(&self) -> Option<String> {
        self.ns
            .run(&["nft", "list", "table", "inet", "erlbridge"])
            .ok()
    }

    /// The whole ruleset as `nft` prints it.
    pub fn ruleset(&self) -> anyhow::Result<String> {
        self.ns.run(&["nft", "list", "ruleset"])
    }
}
