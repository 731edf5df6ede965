//! erlbridge-helperd as root in a workstation namespace, against real nftables, with clients
//! as unprivileged uids. Needs root: CI runs it as root.

use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use erlbridge_testbed::helperd::{ALLOWED_STORM, NET_ADMIN_ONLY, REFUSED_STORM, status_field};
use erlbridge_testbed::workstation::{HOST_V4, HOST_V6};
use erlbridge_testbed::{Bins, Helperd, Spawned, User, Workstation, require_root, rss_kib};
use nix::sys::signal::Signal;
use serde_json::Value;

const POD: &str = "10.244.1.8";
const POD6: &str = "fd00:244::8";

struct Bed {
    // Field order is drop order: processes before the namespace.
    helperd: Helperd,
    ws: Workstation,
    bins: Bins,
}

/// The binaries and a workstation, for a test that starts the helper its own way.
fn staged() -> (Bins, Workstation) {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"]).expect("binaries");
    (bins, Workstation::new().expect("workstation"))
}

fn bed(extra_config: &str) -> Bed {
    let (bins, ws) = staged();
    let helperd = Helperd::start(&ws, &bins, extra_config).expect("helperd");
    Bed { helperd, ws, bins }
}

impl Bed {
    /// The probe's command line for `args`.
    fn probe(&self, args: &[&str]) -> Vec<String> {
        let socket = self.helperd.socket.display().to_string();
        let mut argv = vec![self.bins.path("helper-probe"), "--socket".into(), socket];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Runs the probe as `user` to completion: (exit code, stdout).
    fn run_probe(&self, user: &User, args: &[&str]) -> (i32, String) {
        let argv = self.probe(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, out, err) = self.ws.run_as(user, &argv).expect("probe");
        (code, format!("{out}{err}"))
    }

    /// Starts a session holder as `user`; returns once it has added everything.
    fn hold(&self, user: &User, args: &[&str]) -> Spawned {
        let mut argv = self.probe(&["hold"]);
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut holder = self.ws.spawn_as(user, &argv).expect("probe");
        holder
            .wait_line(Duration::from_secs(10), |l| {
                l.contains("ready") || l.contains("\"code\"")
            })
            .expect("the probe reports");
        holder
    }

    /// Whether `user` can open a TCP connection to `addr` and read the listener's greeting.
    fn connects(&self, user: &User, addr: &str) -> bool {
        let (code, out) = self.run_probe(user, &["connect", addr]);
        code == 0 && out.contains("hello from")
    }

    fn listen(&self, addr: &str) -> Spawned {
        let argv = [self.bins.path("helper-probe"), "listen".into(), addr.into()];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut listener = self.ws.spawn_root(&argv).expect("listener");
        listener
            .wait_line(Duration::from_secs(5), |l| l.contains("listening"))
            .expect("listening");
        listener
    }

    /// The elements of the helper's maps, one per line, as nft prints them.
    fn elements(&self) -> Vec<String> {
        let table = self.ws.helper_table().unwrap_or_default();
        let mut elements = Vec::new();
        for part in table.split("elements = {").skip(1) {
            let body = part.split('}').next().unwrap_or_default();
            elements.extend(
                body.split(',')
                    .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" ")),
            );
        }
        elements
    }

    /// The IPv4 addresses on the workstation's loopback interface, as `ip -o` lists them.
    fn on_lo(&self) -> String {
        self.ws
            .ns
            .run(&["ip", "-o", "-4", "addr", "show", "dev", "lo"])
            .unwrap_or_default()
    }

    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&Bed) -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{what} did not happen within {within:?}; table:\n{:?}",
            self.ws.helper_table()
        );
    }
}

/// A ruleset listing with every `elements = { ... }` block taken out.
fn without_elements(ruleset: &str) -> String {
    let mut rest = ruleset;
    let mut kept = String::new();
    while let Some(start) = rest.find("elements = {") {
        kept.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept.lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn outcome(line: &str) -> Value {
    serde_json::from_str(line).expect("probe prints JSON")
}

#[test]
fn a_mapping_redirects_only_its_owners_connections() {
    let bed = bed("");
    let alice = User::member(61001);
    let bob = User::member(61002);
    let _v4 = bed.listen("127.0.0.1:40000");
    let _v6 = bed.listen("[::1]:40001");
    let pod = format!("{POD}:4369");
    let pod6 = format!("[{POD6}]:4369");

    // The control: without a mapping, nobody reaches the pod address.
    assert!(
        !bed.connects(&alice, &pod),
        "the pod address must be unreachable without erlbridge"
    );
    assert!(!bed.connects(&alice, &pod6));

    let holder = bed.hold(
        &alice,
        &[
            "--map",
            &format!("{pod}=40000"),
            "--map",
            &format!("{pod6}=40001"),
        ],
    );
    assert!(
        holder
            .seen()
            .iter()
            .filter(|l| l.contains("\"ok\":true"))
            .count()
            == 2,
        "{:?}",
        holder.seen()
    );
    assert!(
        bed.connects(&alice, &pod),
        "alice's connection is redirected"
    );
    assert!(
        bed.connects(&alice, &pod6),
        "alice's IPv6 connection is redirected"
    );
    assert!(
        !bed.connects(&bob, &pod),
        "bob's connection to the same address is not"
    );
    assert!(!bed.connects(&bob, &pod6));

    let mut elements = bed.elements();
    elements.sort();
    assert_eq!(
        elements,
        vec![
            format!("61001 . {POD} . 4369 : 127.0.0.1 . 40000"),
            format!("61001 . {POD6} . 4369 : ::1 . 40001"),
        ]
    );
}

#[test]
fn a_uid_outside_the_group_is_refused() {
    // By default the socket itself (root:group, 0660) keeps outsiders out.
    let bed = bed("");
    let mallory = User::outsider(61003);
    let (code, out) = bed.run_probe(&mallory, &["whoami"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    drop(bed);

    // With allowed_uids the socket is open to all, and the helper's own check refuses them.
    let open_bed = self::bed("allowed_uids = [61009]");
    let bed = open_bed;
    let (code, out) = bed.run_probe(&mallory, &["whoami"]);
    assert_eq!(code, 0, "{out}");
    let who = outcome(out.trim());
    assert_eq!(who["uid"], 61003);
    assert_eq!(who["allowed"], false);
    assert!(
        who["refusal"]
            .as_str()
            .unwrap_or_default()
            .contains("usermod -aG"),
        "{who}"
    );

    let holder = bed.hold(&mallory, &["--map", &format!("{POD}:4369=40000")]);
    let refusal = outcome(holder.seen().last().expect("a line"));
    assert_eq!(refusal["code"], "PermissionDenied", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not in group")
    );
    assert!(bed.elements().is_empty());

    // A listed uid outside the group is let in.
    let ci = User::outsider(61009);
    let holder = bed.hold(&ci, &["--map", &format!("{POD}:4369=40000")]);
    assert!(
        holder.seen().iter().any(|l| l.contains("\"ok\":true")),
        "{:?}",
        holder.seen()
    );
    assert_eq!(
        bed.elements(),
        vec![format!("61009 . {POD} . 4369 : 127.0.0.1 . 40000")]
    );
}

#[test]
fn a_killed_client_loses_its_rules_within_a_second() {
    let bed = bed("");
    let alice = User::member(61001);
    let holder = bed.hold(
        &alice,
        &[
            "--map",
            &format!("{POD}:4369=40000"),
            "--map",
            &format!("{POD}:5555=40001"),
        ],
    );
    assert_eq!(bed.elements().len(), 2);
    holder.signal(Signal::SIGKILL);
    bed.wait_for(
        "removal of the killed client's rules",
        Duration::from_secs(1),
        |b| b.elements().is_empty(),
    );
    drop(holder);
    bed.wait_for("the removal's log line", Duration::from_secs(1), |b| {
        b.helperd.log().contains("session ended")
    });
}

#[test]
fn a_killed_helper_leaves_nothing_once_restarted_and_sigterm_removes_the_table() {
    let mut bed = bed("");
    let alice = User::member(61001);
    let holder = bed.hold(&alice, &["--map", &format!("{POD}:4369=40000")]);
    assert_eq!(bed.elements().len(), 1);
    assert_eq!(bed.helperd.stop(Signal::SIGKILL).expect("killed"), -9);
    drop(holder);
    bed.helperd.restart(&bed.ws).expect("restart");
    let table = bed.ws.helper_table().expect("a fresh table");
    assert!(
        bed.elements().is_empty(),
        "the restarted helper starts empty:\n{table}"
    );
    assert!(table.contains("meta skuid"), "{table}");

    assert_eq!(bed.helperd.stop(Signal::SIGTERM).expect("stopped"), 0);
    assert_eq!(bed.ws.helper_table(), None, "SIGTERM removes the table");
    assert!(!bed.helperd.socket.exists(), "and the socket");
}

#[test]
fn foreign_tables_are_untouched() {
    let (bins, ws) = staged();
    ws.ns
        .nft(
            "table ip docker_nat {\n\
               chain OUTPUT { type nat hook output priority -100; policy accept; ip daddr 10.244.0.0/16 counter; }\n\
             }\n\
             table inet firewalld {\n\
               set trusted { type ipv4_addr; elements = { 10.244.1.8 } }\n\
               chain filter_OUTPUT { type filter hook output priority 0; policy accept; }\n\
             }\n",
        )
        .expect("foreign tables");
    let foreign = |ws: &Workstation| {
        ["ip docker_nat", "inet firewalld"]
            .map(|t| {
                let argv: Vec<&str> = ["nft", "list", "table"]
                    .into_iter()
                    .chain(t.split(' '))
                    .collect();
                ws.ns.run(&argv).expect("foreign table")
            })
            .join("\n")
            // Counters move with the tests' own packets; everything else must stay.
            .lines()
            .map(|l| l.split(" counter").next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
    };
    let before = foreign(&ws);
    let mut bed = Bed {
        helperd: Helperd::start(&ws, &bins, "").expect("helperd"),
        ws,
        bins,
    };
    let alice = User::member(61001);
    let _listener = bed.listen("127.0.0.1:40000");
    let holder = bed.hold(&alice, &["--map", &format!("{POD}:4369=40000")]);
    assert!(bed.connects(&alice, &format!("{POD}:4369")));
    holder.signal(Signal::SIGKILL);
    bed.wait_for("removal", Duration::from_secs(1), |b| {
        b.elements().is_empty()
    });
    bed.helperd.stop(Signal::SIGKILL).expect("killed");
    bed.helperd.restart(&bed.ws).expect("restart");
    bed.helperd.stop(Signal::SIGTERM).expect("stopped");
    assert_eq!(foreign(&bed.ws), before);
}

#[test]
fn a_flood_of_bad_requests_changes_nothing() {
    let bed = bed("max_rules_per_uid = 5");
    let alice = User::member(61001);
    let ruleset_before = bed.ws.ruleset().expect("ruleset");
    let argv = bed.probe(&[
        "flood",
        "--quota",
        "5",
        "--extra",
        "10000",
        "--host-addr",
        HOST_V4,
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut flood = bed.ws.spawn_as(&alice, &argv).expect("flood");
    let line = flood
        .wait_line(Duration::from_secs(120), |l| l.contains("codes"))
        .expect("the flood finishes");
    let codes = outcome(&line)["codes"].clone();
    assert_eq!(codes["Ok"], 5, "{codes}");
    assert_eq!(codes["ResourceExhausted"], 10000, "{codes}");
    assert_eq!(codes["AlreadyExists"], Value::Null, "{codes}");
    let invalid = codes["InvalidArgument"].as_u64().unwrap_or(0);
    let denied = codes["PermissionDenied"].as_u64().unwrap_or(0);
    // The two 3 MiB addresses and the 100,000-character label are past the request size
    // limit: refused before they are decoded.
    assert_eq!(codes["OutOfRange"], 3, "{codes}");
    assert_eq!(
        (invalid, denied, codes["NotFound"].as_u64()),
        (14, 2, Some(1)),
        "{codes}"
    );

    let elements = bed.elements();
    assert_eq!(elements.len(), 5, "{elements:?}");
    assert!(
        elements
            .iter()
            .all(|e| e.starts_with("61001 . 10.244.1.8 . ") && e.contains(": 127.0.0.1 . 40000"))
    );
    // Beside the quota's five rules, the ruleset is as it was.
    let ruleset_after = bed.ws.ruleset().expect("ruleset");
    assert_eq!(
        without_elements(&ruleset_after),
        without_elements(&ruleset_before)
    );
    let addrs = bed.ws.ns.run(&["ip", "-o", "addr"]).expect("addresses");
    assert!(!addrs.contains(POD), "no alias was added: {addrs}");
    assert!(addrs.contains(HOST_V6));
}

#[test]
fn the_running_helper_keeps_only_cap_net_admin() {
    let bed = bed("");
    let pid = bed.helperd.pid().expect("running");
    // `ip netns exec` execs, so the spawned pid is the helper itself.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("Name:\terlbridge-helpe"), "{status}");
    for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, set),
            NET_ADMIN_ONLY,
            "{set} in\n{status}"
        );
    }
    // And with only that, nft still works for it.
    let alice = User::member(61001);
    let _holder = bed.hold(&alice, &["--map", &format!("{POD}:4369=40000")]);
    assert_eq!(bed.elements().len(), 1);
}

#[test]
fn aliases_go_on_lo_while_held_and_go_away_after() {
    let bed = bed("aliases = true");
    let alice = User::member(61001);
    let bob = User::member(61002);
    let a = bed.hold(&alice, &["--alias", POD]);
    let b = bed.hold(&bob, &["--alias", POD]);
    assert!(
        bed.on_lo().contains(&format!("{POD}/32")),
        "{}",
        bed.on_lo()
    );
    a.signal(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(bed.on_lo().contains(POD), "bob still holds it");
    b.signal(Signal::SIGKILL);
    bed.wait_for("alias removal", Duration::from_secs(1), |bed| {
        !bed.on_lo().contains(POD)
    });
    assert!(
        bed.on_lo().contains("127.0.0.1"),
        "the loopback address itself stays"
    );
}

/// A Unix socket's listing in `/proc/PID/fd` and what each entry points to.
fn descriptors(pid: i32) -> Vec<(String, String)> {
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), target)
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

#[test]
fn nothing_inherited_reaches_the_helper_or_what_it_runs() {
    let (bins, ws) = staged();
    let scratch = ws.scratch().display().to_string();
    // An `nft` that notes its environment and descriptors, then runs the real one.
    let nft = ws.scratch().join("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\n/usr/bin/env > {scratch}/nft.env\n\
             fds=$(/bin/ls -l /proc/$$/fd)\necho \"$fds\" > {scratch}/nft.fds\n\
             exec /usr/sbin/nft \"$@\"\n"
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = ws.scratch().join("secret");
    std::fs::write(&secret, "left open by a careless parent").expect("secret");
    let helperd = Helperd::start_from_shell(
        &ws,
        &bins,
        &format!("nft = {:?}", nft.display().to_string()),
        &format!(
            "exec 7<{}; exec 9<{}; export CARELESS=1",
            secret.display(),
            secret.display()
        ),
    )
    .expect("helperd");

    let pid = helperd.pid().expect("running");
    let fds = descriptors(pid);
    assert!(
        fds.iter().all(|(_, target)| !target.contains("secret")),
        "the helper kept what its parent left open: {fds:?}"
    );
    let env = std::fs::read_to_string(ws.scratch().join("nft.env")).expect("nft ran");
    let env: Vec<&str> = env
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("OLDPWD="))
        .collect();
    assert!(env.is_empty(), "nft got an environment: {env:?}");
    let nft_fds = std::fs::read_to_string(ws.scratch().join("nft.fds")).expect("nft ran");
    for line in nft_fds.lines().filter(|l| l.contains(" -> ")) {
        let target = line.rsplit(" -> ").next().unwrap_or_default();
        assert!(
            target.starts_with("pipe:") || target.ends_with("/nft") || target == "/dev/null",
            "nft inherited {target}:\n{nft_fds}"
        );
    }
}

#[test]
fn a_socket_activated_helper_keeps_only_its_socket() {
    let (bins, ws) = staged();
    let helperd = Helperd::start_activated(&ws, &bins, "").expect("helperd");
    let pid = helperd.pid().expect("running");
    // systemd-socket-activate execs the helper once the socket is used.
    let fds = descriptors(pid);
    let sockets = fds.iter().filter(|(_, t)| t.starts_with("socket:")).count();
    assert!(sockets >= 1, "{fds:?}");
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).expect("fd 3");
    let flags = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(str::trim)
        .and_then(|f| u32::from_str_radix(f, 8).ok())
        .expect("flags");
    assert_ne!(
        flags & 0o2000000,
        0,
        "the socket systemd passed is close-on-exec"
    );
}

#[test]
fn a_connection_flood_leaves_legitimate_calls_working_and_nothing_behind() {
    // allowed_uids opens the socket to every uid, so a refused uid reaches the helper itself.
    let bed = bed("allowed_uids = [61099]");
    let pid = bed.helperd.pid().expect("running");
    let churner = User::member(61001);
    let flooder = User::member(61002);
    let refused = User::outsider(61003);
    let latecomer = User::member(61004);
    let (code, out) = bed.run_probe(&latecomer, &["whoami"]);
    assert_eq!(code, 0, "{out}");
    let (fds_before, rss_before) = (bed.helperd.open_descriptors(), rss_kib(pid));

    let stop = bed.ws.scratch().join("stop-churn");
    let spawn = |user: &User, args: &[&str]| {
        let argv = bed.probe(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        bed.ws.spawn_as(user, &argv).expect("probe")
    };
    let mut churn = spawn(&churner, &["churn", "--until", &stop.display().to_string()]);
    let mut refused_storm = spawn(&refused, REFUSED_STORM);
    let mut allowed_storm = spawn(&flooder, ALLOWED_STORM);

    // While the storms blow: sample the helper, and check another uid gets in.
    let (mut fds_most, mut rss_most) = (0, 0);
    let mut latecomer_served = false;
    let storms_done = |storm: &mut Spawned| {
        storm
            .wait_line(Duration::ZERO, |l| l.contains("outcomes"))
            .ok()
    };
    let (mut refused_outcome, mut allowed_outcome) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while refused_outcome.is_none() || allowed_outcome.is_none() {
        assert!(
            Instant::now() < deadline,
            "the storms did not end in 10 minutes"
        );
        fds_most = fds_most.max(bed.helperd.open_descriptors());
        rss_most = rss_most.max(rss_kib(pid));
        if !latecomer_served {
            let (code, out) = bed.run_probe(&latecomer, &["whoami"]);
            assert!(
                code != 0 || out.contains("\"allowed\":true"),
                "another uid's connection during the flood: {out}"
            );
            latecomer_served = code == 0;
        }
        refused_outcome = refused_outcome.or_else(|| storms_done(&mut refused_storm));
        allowed_outcome = allowed_outcome.or_else(|| storms_done(&mut allowed_storm));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&stop, "").expect("stop the churn");
    let churned = outcome(
        &churn
            .wait_line(Duration::from_secs(30), |l| l.contains("cycles"))
            .expect("the churn ends"),
    );

    println!(
        "refused uid: {}",
        refused_outcome.as_deref().unwrap_or_default()
    );
    println!(
        "allowed uid: {}",
        allowed_outcome.as_deref().unwrap_or_default()
    );
    println!(
        "helper: {fds_before} descriptors and {rss_before} KiB before, at most {fds_most} and \
         {rss_most} KiB during; churn: {churned}"
    );
    assert!(latecomer_served, "another uid was served during the flood");
    assert!(churned["cycles"].as_u64().unwrap_or(0) > 0, "{churned}");
    assert_eq!(churned["failures"], serde_json::json!([]), "{churned}");

    let refused_outcome = outcome(refused_outcome.as_deref().unwrap_or_default());
    let answered = refused_outcome["outcomes"]["PermissionDenied"]
        .as_u64()
        .unwrap_or(0);
    assert!(answered > 0, "{refused_outcome}");
    assert!(
        refused_outcome["messages"]["PermissionDenied"]
            .as_str()
            .unwrap_or_default()
            .contains("not in group"),
        "{refused_outcome}"
    );
    assert_eq!(
        refused_outcome["outcomes"]["Ok"],
        Value::Null,
        "{refused_outcome}"
    );

    let allowed_outcome = outcome(allowed_outcome.as_deref().unwrap_or_default());
    assert!(
        allowed_outcome["outcomes"]["Ok"].as_u64().unwrap_or(0) > 0,
        "{allowed_outcome}"
    );
    assert!(
        allowed_outcome["messages"]["ResourceExhausted"]
            .as_str()
            .unwrap_or_default()
            .contains("max_connections_per_uid in helperd.toml"),
        "{allowed_outcome}"
    );

    // Bounds, with generous margins: the caps (20 per uid, 32 refusals at once) hold the
    // descriptors; memory grows by well under a few kilobytes per attempt.
    assert!(
        fds_most <= fds_before + 100,
        "{fds_most} descriptors during the flood, {fds_before} before"
    );
    assert!(
        rss_most <= rss_before + 64 * 1024,
        "{rss_most} KiB during the flood, {rss_before} KiB before"
    );
    drop(churn);
    bed.wait_for(
        "the descriptors' return to their baseline",
        Duration::from_secs(30),
        |b| b.helperd.open_descriptors() <= fds_before,
    );
    bed.wait_for("memory to come back", Duration::from_secs(30), |_| {
        rss_kib(pid) <= rss_before + 8 * 1024
    });
    println!("helper after the flood: {} KiB", rss_kib(pid));
    bed.wait_for("an empty table", Duration::from_secs(5), |b| {
        b.elements().is_empty()
    });
}

#[test]
fn aliases_are_gone_after_a_helper_restart() {
    let mut bed = bed("aliases = true");
    let alice = User::member(61001);
    let holder = bed.hold(&alice, &["--alias", POD]);
    assert!(
        holder.seen().iter().any(|l| l.contains("\"ok\":true")),
        "{:?}",
        holder.seen()
    );
    assert!(
        bed.on_lo().contains(&format!("{POD}/32")),
        "{}",
        bed.on_lo()
    );
    assert_eq!(bed.helperd.stop(Signal::SIGKILL).expect("killed"), -9);
    assert!(bed.on_lo().contains(POD), "a killed helper cannot clean up");
    bed.helperd.restart(&bed.ws).expect("restart");
    assert!(
        !bed.on_lo().contains(POD),
        "the restarted helper removed the alias: {}",
        bed.on_lo()
    );
    assert!(bed.on_lo().contains("127.0.0.1"));

    // And SIGTERM removes the aliases it holds.
    let _holder = bed.hold(&alice, &["--alias", POD]);
    assert!(bed.on_lo().contains(POD));
    assert_eq!(bed.helperd.stop(Signal::SIGTERM).expect("stopped"), 0);
    assert!(!bed.on_lo().contains(POD), "{}", bed.on_lo());
}

#[test]
fn without_a_route_an_alias_and_a_mapping_redirect_only_their_owner() {
    let bed = bed("aliases = true");
    bed.ws.set_default_route(false).expect("no default route");
    let alice = User::member(61001);
    let bob = User::member(61002);
    let _listener = bed.listen("127.0.0.1:40000");
    let pod = format!("{POD}:4369");
    let (_, out) = bed.run_probe(&alice, &["connect", &pod]);
    assert!(
        out.contains("unreachable"),
        "the control: without a route, connecting fails at once: {out}"
    );

    let holder = bed.hold(&alice, &["--alias", POD, "--map", &format!("{pod}=40000")]);
    assert_eq!(
        holder
            .seen()
            .iter()
            .filter(|l| l.contains("\"ok\":true"))
            .count(),
        2,
        "{:?}",
        holder.seen()
    );
    assert!(bed.connects(&alice, &pod), "alice is redirected");
    let (code, out) = bed.run_probe(&bob, &["connect", &pod]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused"),
        "bob's connection is refused by the alias, not redirected: {out}"
    );
}

#[test]
fn the_total_cap_refuses_new_connections_whoever_asks() {
    let bed = bed("max_connections = 20");
    let hog = User::member(61001);
    let other = User::member(61002);
    // The hog holds every place, without a call (the idle timeout is 10 s).
    let argv = bed.probe(&[
        "storm",
        "--connections",
        "20",
        "--parallel",
        "20",
        "--hold-ms",
        "4000",
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _hog = bed.ws.spawn_as(&hog, &argv).expect("storm");
    bed.wait_for("the hog's connections", Duration::from_secs(5), |b| {
        b.helperd.open_descriptors() >= 20
    });
    let (code, out) = bed.run_probe(&other, &["whoami"]);
    assert_eq!(code, 1, "{out}");
    let refusal = outcome(out.trim());
    assert_eq!(refusal["code"], "ResourceExhausted", "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap_or_default()
            .contains("(max_connections in helperd.toml)"),
        "{refusal}"
    );
}

#[test]
fn a_helper_started_by_hand_with_a_bad_config_says_why_and_exits() {
    let (bins, ws) = staged();
    let err = Helperd::start(&ws, &bins, "max_connections_per_uid = 0").expect_err("a bad key");
    let err = format!("{err:#}");
    assert!(err.contains("exited with 1"), "{err}");
    assert!(
        err.contains("its config") && err.contains("`max_connections_per_uid`: must be at least 1"),
        "{err}"
    );
}

#[test]
fn a_socket_activated_helper_with_a_bad_config_keeps_the_socket_and_says_why() {
    let (bins, ws) = staged();
    let helperd =
        Helperd::start_activated(&ws, &bins, "idle_timeout_seconds = 0").expect("it answers");
    let socket = helperd.socket.display().to_string();
    let probe = bins.path("helper-probe");
    for user in [User::member(61001), User::outsider(61002)] {
        let (code, out, _) = ws
            .run_as(&user, &[&probe, "--socket", &socket, "whoami"])
            .expect("probe");
        assert_eq!(code, 1, "{out}");
        let status = outcome(out.trim());
        if user.groups.is_empty() {
            // The socket's mode keeps outsiders out before the helper is asked.
            assert!(out.contains("Permission denied"), "{out}");
            continue;
        }
        assert_eq!(status["code"], "FailedPrecondition", "{status}");
        assert!(
            status["message"].as_str().unwrap_or_default().contains(
                "is invalid: `idle_timeout_seconds`: must be at least 1; fix it, then run: \
                 sudo systemctl restart erlbridge-helperd"
            ),
            "{status}"
        );
    }
    // It holds no capability at all.
    let status = std::fs::read_to_string(format!("/proc/{}/status", helperd.pid().expect("pid")))
        .expect("status");
    for set in ["CapEff:", "CapPrm:"] {
        assert_eq!(
            status_field(&status, set),
            "0000000000000000",
            "{set} in\n{status}"
        );
    }
}

/// The CPU time process `pid` has used, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn out_of_descriptors_the_helper_pauses_instead_of_spinning() {
    let bed = bed("");
    let pid = bed.helperd.pid().expect("running");
    let alice = User::member(61001);
    // Leave the helper one descriptor to spare (its soft limit; the hard one stays), then give
    // it a crowd.
    let limit = (bed.helperd.open_descriptors() + 1).to_string();
    let prlimit = |soft: &str| {
        erlbridge_testbed::netns::run(std::process::Command::new("prlimit").args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:"),
        ]))
        .expect("prlimit")
    };
    prlimit(&limit);
    let argv = bed.probe(&[
        "storm",
        "--connections",
        "50",
        "--parallel",
        "50",
        "--hold-ms",
        "4000",
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _crowd = bed.ws.spawn_as(&alice, &argv).expect("storm");
    bed.wait_for("the helper to run out", Duration::from_secs(5), |b| {
        b.helperd.log().contains("out of descriptors")
    });
    let (ticks, start) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = (cpu_ticks(pid) - ticks) as f64 / 100.0;
    let wall = start.elapsed().as_secs_f64();
    assert!(
        used < wall / 4.0,
        "the helper used {used:.2} s of CPU in {wall:.2} s while out of descriptors"
    );

    // With descriptors back, the helper serves again (another uid: alice's crowd is at its cap).
    prlimit("1024");
    let (code, out) = bed.run_probe(&User::member(61002), &["whoami"]);
    assert_eq!(code, 0, "{out}");
}
