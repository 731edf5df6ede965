//! erlbridge-helperd as root in a workstation namespace, against real nftables, with clients
//! as unprivileged uids. Needs root: CI runs it as root.

use std::time::{Duration, Instant};

use erlbridge_testbed::workstation::{HOST_V4, HOST_V6};
use erlbridge_testbed::{Bins, Helperd, Spawned, User, Workstation, require_root};
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

fn bed(extra_config: &str) -> Bed {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"]).expect("binaries");
    let ws = Workstation::new().expect("workstation");
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
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"]).expect("binaries");
    let ws = Workstation::new().expect("workstation");
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
    assert_eq!(
        (invalid, denied, codes["NotFound"].as_u64()),
        (17, 2, Some(1)),
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
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    let net_admin = "0000000000001000";
    assert!(status.contains("Name:\terlbridge-helpe"), "{status}");
    for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), net_admin, "{set} in\n{status}");
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
    let on_lo = |bed: &Bed| {
        bed.ws
            .ns
            .run(&["ip", "-o", "-4", "addr", "show", "dev", "lo"])
            .unwrap_or_default()
    };
    assert!(
        on_lo(&bed).contains(&format!("{POD}/32")),
        "{}",
        on_lo(&bed)
    );
    a.signal(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    assert!(on_lo(&bed).contains(POD), "bob still holds it");
    b.signal(Signal::SIGKILL);
    bed.wait_for("alias removal", Duration::from_secs(1), |bed| {
        !on_lo(bed).contains(POD)
    });
    assert!(
        on_lo(&bed).contains("127.0.0.1"),
        "the loopback address itself stays"
    );
}
