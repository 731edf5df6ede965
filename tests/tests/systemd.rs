//! The Debian package under a real systemd (PID 1 in a container, see the test bed's
//! `container`): installed as IT would, socket-activated, hardened as its unit says, serving a
//! group member and refusing others, restarted under a client, flooded, misconfigured and
//! recovered, upgraded, and purged. Needs root: CI runs it as root.

use std::time::{Duration, Instant};

use erlbridge_testbed::container::Container;
use erlbridge_testbed::helperd::{ALLOWED_STORM, NET_ADMIN_ONLY, REFUSED_STORM, status_field};
use erlbridge_testbed::{package, require_root};
use serde_json::Value;

const PROBE: &str = "/usr/local/bin/helper-probe";
const CONFIG: &str = "/etc/erlbridge/helperd.toml";
const POD: &str = "10.244.1.8";
const MEMBER: u32 = 1001;
const OUTSIDER: u32 = 1002;
const FLOODER: u32 = 1003;
/// Only to open the socket to every uid for the flood: listed, so the socket must be 0666.
const LISTED: u32 = 1099;
/// Where an administrator's changes to the socket unit go.
const DROP_IN_DIR: &str = "/etc/systemd/system/erlbridge-helperd.socket.d";

/// `argv` as `uid`, with the access group `gid` when given.
fn as_uid(uid: u32, gid: Option<&str>, argv: &[&str]) -> Vec<String> {
    let mut wrapped = vec![
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
    ];
    wrapped.push(match gid {
        Some(gid) => format!("--groups={gid}"),
        None => "--clear-groups".to_owned(),
    });
    wrapped.push("--".to_owned());
    wrapped.extend(argv.iter().map(|a| (*a).to_owned()));
    wrapped
}

struct Host {
    container: Container,
    /// The erlbridge group's gid, once the package created it.
    gid: Option<String>,
}

impl Host {
    fn run(&self, argv: &[&str]) -> String {
        self.container.run(argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn output(&self, argv: &[&str]) -> (i32, String) {
        self.container.output(argv).expect("nsenter")
    }

    /// Runs the probe as `uid` (a member of the group when `member`): (exit code, output).
    fn probe(&self, uid: u32, member: bool, args: &[&str]) -> (i32, String) {
        let mut argv = vec![PROBE];
        argv.extend_from_slice(args);
        let gid = self.gid.as_deref().filter(|_| member);
        let argv = as_uid(uid, gid, &argv);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.output(&argv)
    }

    fn spawn_probe(&mut self, uid: u32, member: bool, args: &[&str]) -> usize {
        let mut argv = vec![PROBE];
        argv.extend_from_slice(args);
        let gid = self.gid.as_deref().filter(|_| member);
        let argv = as_uid(uid, gid, &argv);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.container.spawn(&argv).expect("spawn")
    }

    fn whoami(&self, uid: u32) -> Value {
        let (_, out) = self.probe(uid, true, &["whoami"]);
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("not JSON: {out}"))
    }

    fn is_active(&self, unit: &str) -> String {
        self.output(&["systemctl", "is-active", unit])
            .1
            .trim()
            .to_owned()
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "-p", property, "--value", unit])
            .trim()
            .to_owned()
    }

    fn main_pid(&self) -> String {
        self.show("erlbridge-helperd.service", "MainPID")
    }

    fn table(&self) -> Option<String> {
        let (code, out) = self.output(&["nft", "list", "table", "inet", "erlbridge"]);
        (code == 0).then_some(out)
    }

    fn descriptors(&self, pid: &str) -> usize {
        self.output(&["ls", &format!("/proc/{pid}/fd")])
            .1
            .lines()
            .count()
    }

    fn install(&self, deb: &str) -> String {
        self.run(&["dpkg", "-i", deb])
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Host) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_package_under_a_real_systemd() {
    require_root();
    let deb = package::built().expect("the package");
    let scratch = tempfile::tempdir().expect("tempdir");
    let next = package::with_next_revision(&deb, scratch.path()).expect("a higher version");
    let mut container = Container::prepare().expect("container");
    let root = container.root().to_owned();
    for (from, to) in [
        (deb.clone(), "root/erlbridge.deb"),
        (next, "root/erlbridge-next.deb"),
        (
            erlbridge_testbed::bins::build_dir()
                .expect("build dir")
                .join("helper-probe"),
            "usr/local/bin/helper-probe",
        ),
    ] {
        std::fs::copy(&from, root.join(to))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }

    // On a host where systemd does not run, the install warns and says what to do.
    let (code, out) = container
        .chroot(&["dpkg", "-i", "/root/erlbridge.deb"])
        .expect("chroot");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("this host does not run systemd")
            && out.contains("/usr/sbin/erlbridge-helperd --config /etc/erlbridge/helperd.toml"),
        "{out}"
    );
    let (code, out) = container
        .chroot(&["dpkg", "--purge", "erlbridge"])
        .expect("chroot");
    assert_eq!(code, 0, "{out}");

    container.boot().expect("boot");
    let mut host = Host {
        container,
        gid: None,
    };
    let installed = host.install("/root/erlbridge.deb");
    host.gid = Some(
        host.run(&["getent", "group", "erlbridge"])
            .split(':')
            .nth(2)
            .expect("a gid")
            .to_owned(),
    );

    // Socket activation: the socket listens, the service starts on first use.
    assert_eq!(
        host.is_active("erlbridge-helperd.socket"),
        "active",
        "{installed}"
    );
    assert_eq!(host.is_active("erlbridge-helperd.service"), "inactive");
    let socket = host.run(&["stat", "-c", "%U:%G %a", "/run/erlbridge/helper.sock"]);
    assert_eq!(socket.trim(), "root:erlbridge 660");
    let who = host.whoami(MEMBER);
    assert_eq!(who["allowed"], true, "{who}");
    assert_eq!(host.is_active("erlbridge-helperd.service"), "active");

    // The service as its unit runs it.
    let pid = host.main_pid();
    let status = host.run(&["cat", &format!("/proc/{pid}/status")]);
    let field = |name| status_field(&status, name);
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(field(set), NET_ADMIN_ONLY, "{set} in\n{status}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    let limits = host.run(&["cat", &format!("/proc/{pid}/limits")]);
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        open_files.get(3..5),
        Some(&["1024", "1024"][..]),
        "{limits}"
    );
    assert_eq!(
        host.show("erlbridge-helperd.service", "MemoryMax"),
        (64u64 << 20).to_string()
    );

    // A member's mapping lands in the table; an outsider cannot even open the socket.
    let map = format!("{POD}:4369=40000");
    let holder = host.spawn_probe(MEMBER, true, &["hold", "--reconnect", "--map", &map]);
    let ready = host
        .container
        .spawned(holder)
        .wait_line(Duration::from_secs(10), |l| l.contains("ready"));
    ready.unwrap_or_else(|e| panic!("{e:#}"));
    let element = format!("{MEMBER} . {POD} . 4369 : 127.0.0.1 . 40000");
    assert!(
        host.table().unwrap_or_default().contains(&element),
        "{:?}",
        host.table()
    );
    let (code, out) = host.probe(OUTSIDER, false, &["whoami"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Permission denied"), "{out}");

    // A restart under a client: its session ends, and its rules come back when it reconnects.
    host.run(&["systemctl", "restart", "erlbridge-helperd"]);
    let client = host.container.spawned(holder);
    client
        .wait_line(Duration::from_secs(10), |l| l.contains("lost"))
        .expect("the client sees its session end");
    client
        .wait_line(Duration::from_secs(20), |l| l.contains("restored"))
        .expect("the client gets its session back");
    assert_ne!(host.main_pid(), pid, "a new helper");
    assert!(host.table().unwrap_or_default().contains(&element));

    flood(&mut host);
    a_bad_config_leaves_the_socket_listening(&host);

    // An upgrade keeps an edited configuration and restarts the helper with it.
    host.run(&[
        "sed",
        "-i",
        "s/^max_rules_per_uid = 256$/max_rules_per_uid = 7/",
        CONFIG,
    ]);
    host.run(&["systemctl", "restart", "erlbridge-helperd"]);
    assert_eq!(host.whoami(MEMBER)["max_rules_per_uid"], 7);
    let upgraded = host.install("/root/erlbridge-next.deb");
    let version = host.run(&["dpkg-query", "-W", "-f", "${Version}", "erlbridge"]);
    assert_eq!(
        version,
        package::field(&deb, "Version")
            .expect("version")
            .replace("-1", "-2"),
        "{upgraded}"
    );
    assert!(
        host.run(&["cat", CONFIG])
            .contains("\nmax_rules_per_uid = 7\n")
    );
    assert_eq!(
        host.is_active("erlbridge-helperd.socket"),
        "active",
        "{upgraded}"
    );
    assert_eq!(host.whoami(MEMBER)["max_rules_per_uid"], 7, "{upgraded}");

    // Purge leaves nothing: no table, no group it created, no configuration, no unit.
    host.container.kill(holder);
    let purged = host.run(&["dpkg", "--purge", "erlbridge"]);
    assert_eq!(host.table(), None, "{purged}");
    assert_eq!(
        host.output(&["getent", "group", "erlbridge"]).0,
        2,
        "{purged}"
    );
    for gone in [
        "/etc/erlbridge",
        "/var/lib/erlbridge",
        "/run/erlbridge/helper.sock",
    ] {
        assert_ne!(
            host.output(&["test", "-e", gone]).0,
            0,
            "{gone} is left: {purged}"
        );
    }
    assert_ne!(host.is_active("erlbridge-helperd.socket"), "active");

    // A group the package created but that has members since: purge keeps it, and says so.
    host.install("/root/erlbridge.deb");
    host.run(&[
        "useradd",
        "--no-create-home",
        "--groups",
        "erlbridge",
        "bob",
    ]);
    let purged = host.run(&["dpkg", "--purge", "erlbridge"]);
    assert!(
        purged.contains("kept the erlbridge group: its members (bob) may still need it"),
        "{purged}"
    );
    // A group that was there before the package is not the package's: purge leaves it alone.
    host.run(&["gpasswd", "--delete", "bob", "erlbridge"]);
    host.install("/root/erlbridge.deb");
    let purged = host.run(&["dpkg", "--purge", "erlbridge"]);
    assert!(!purged.contains("erlbridge group"), "{purged}");
    assert!(
        host.output(&["getent", "group", "erlbridge"]).0 == 0,
        "{purged}"
    );
}

/// 20,000 connection attempts from a refused uid and 2,000 from an allowed one against the
/// real unit, while a member adds and removes mappings: the calls keep working, the unit does
/// not restart, and the helper's descriptors stay within its caps.
fn flood(host: &mut Host) {
    // A refused uid must reach the helper itself: list a uid, and open the socket to all, as
    // helperd.toml tells IT to.
    let listed = format!("s/^allowed_uids = \\[\\]$/allowed_uids = [{LISTED}]/");
    host.run(&["sed", "-i", &listed, CONFIG]);
    host.run(&["mkdir", "-p", DROP_IN_DIR]);
    host.run(&[
        "sh",
        "-c",
        &format!("printf '[Socket]\\nSocketMode=0666\\n' > {DROP_IN_DIR}/open.conf"),
    ]);
    host.run(&["systemctl", "daemon-reload"]);
    host.run(&["systemctl", "restart", "erlbridge-helperd.socket"]);
    let mode = host.run(&["stat", "-c", "%a", "/run/erlbridge/helper.sock"]);
    assert_eq!(mode.trim(), "666");
    assert_eq!(host.whoami(MEMBER)["allowed"], true);
    let pid = host.main_pid();
    let before = host.descriptors(&pid);

    let churn = host.spawn_probe(MEMBER, true, &["churn", "--until", "/run/stop-churn"]);
    let refused = host.spawn_probe(OUTSIDER, false, REFUSED_STORM);
    let allowed = host.spawn_probe(FLOODER, true, ALLOWED_STORM);
    let mut most = before;
    let mut outcomes = [None, None];
    let deadline = Instant::now() + Duration::from_secs(600);
    while outcomes.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "the storms did not end in 10 minutes"
        );
        most = most.max(host.descriptors(&pid));
        for (outcome, storm) in outcomes.iter_mut().zip([refused, allowed]) {
            if outcome.is_none() {
                *outcome = host
                    .container
                    .spawned(storm)
                    .wait_line(Duration::ZERO, |l| l.contains("outcomes"))
                    .ok();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    host.run(&["touch", "/run/stop-churn"]);
    let churned = host
        .container
        .spawned(churn)
        .wait_line(Duration::from_secs(30), |l| l.contains("cycles"))
        .expect("the churn ends");
    println!(
        "under systemd: {outcomes:?}; churn: {churned}; descriptors {before} before, at most {most}"
    );
    let churned: Value = serde_json::from_str(&churned).expect("JSON");
    assert!(churned["cycles"].as_u64().unwrap_or(0) > 0, "{churned}");
    assert_eq!(churned["failures"], serde_json::json!([]), "{churned}");
    let refused: Value =
        serde_json::from_str(outcomes[0].as_deref().unwrap_or_default()).expect("JSON");
    assert!(
        refused["messages"]["PermissionDenied"]
            .as_str()
            .unwrap_or_default()
            .contains("not in group erlbridge"),
        "{refused}"
    );
    let allowed: Value =
        serde_json::from_str(outcomes[1].as_deref().unwrap_or_default()).expect("JSON");
    assert!(
        allowed["outcomes"]["Ok"].as_u64().unwrap_or(0) > 0,
        "{allowed}"
    );
    assert!(
        most <= before + 100,
        "{most} descriptors during the flood, {before} before: the caps should hold them"
    );
    assert_eq!(host.main_pid(), pid, "the helper did not restart");
    assert_eq!(host.show("erlbridge-helperd.service", "NRestarts"), "0");
    host.wait_for("the descriptors' return to their baseline", |h| {
        h.descriptors(&pid) <= before
    });

    // Back to the packaged socket and configuration.
    host.run(&["rm", "-r", DROP_IN_DIR]);
    host.run(&[
        "sed",
        "-i",
        "s/^allowed_uids = .*$/allowed_uids = []/",
        CONFIG,
    ]);
    host.run(&["systemctl", "daemon-reload"]);
    host.run(&["systemctl", "restart", "erlbridge-helperd.socket"]);
    assert_eq!(host.whoami(MEMBER)["allowed"], true);
}

/// A configuration error leaves the socket listening, every call says what is wrong and the
/// one command that recovers, and that command recovers.
fn a_bad_config_leaves_the_socket_listening(host: &Host) {
    let set = |value: &str| {
        let edit = format!("s/^max_connections = .*$/max_connections = {value}/");
        host.run(&["sed", "-i", &edit, CONFIG]);
    };
    set("0");
    host.run(&["systemctl", "restart", "erlbridge-helperd"]);
    for _ in 0..10 {
        let (code, out) = host.probe(MEMBER, true, &["whoami"]);
        assert_eq!(code, 1, "{out}");
        let status: Value = serde_json::from_str(out.trim()).expect("JSON");
        assert_eq!(status["code"], "FailedPrecondition", "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(
                "the helper could not start: its config /etc/erlbridge/helperd.toml is invalid: \
                 `max_connections`: must be at least 1"
            ) && message.ends_with("fix it, then run: sudo systemctl restart erlbridge-helperd"),
            "{message}"
        );
    }
    assert_eq!(host.is_active("erlbridge-helperd.socket"), "active");
    assert_eq!(host.is_active("erlbridge-helperd.service"), "active");
    assert_eq!(host.show("erlbridge-helperd.service", "NRestarts"), "0");
    let journal = host.run(&["journalctl", "-u", "erlbridge-helperd", "--no-pager"]);
    assert!(
        journal.contains("`max_connections`: must be at least 1"),
        "{journal}"
    );

    set("512");
    host.run(&["systemctl", "restart", "erlbridge-helperd"]);
    assert_eq!(host.whoami(MEMBER)["allowed"], true);
}
