use std::net::IpAddr;

use proptest::prelude::*;
use tonic::Code;

use super::*;
use crate::config::Config;
use crate::error::Error;
use crate::request::{AddMapping, Alias, RemoveMapping, SessionId};

const GROUP_GID: u32 = 4242;
/// The connection every case's caller is on.
const CONN: u64 = 1;
const HOST: &str = "10.0.2.15";

fn policy() -> Policy {
    let config = Config::parse(
        std::path::Path::new("helperd.toml"),
        "allowed_uids = [900]\nmax_rules_per_uid = 4\nmax_sessions_per_uid = 2\nmax_aliases_per_uid = 2\n\
         max_connections_per_uid = 3\nmax_connections = 5",
    )
    .expect("valid");
    Policy::new(&config, Some(GROUP_GID))
}

fn member(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        groups: vec![GROUP_GID],
        pid: 77,
    }
}

fn outsider(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        groups: vec![100],
        pid: 78,
    }
}

/// The state a case sees. Session 1 is the caller's, on its connection, unless
/// `session_on` says otherwise.
struct FakeLedger {
    sessions: usize,
    rules: usize,
    aliases: usize,
    live: Vec<(RuleKey, SessionId)>,
    held: Vec<(SessionId, IpAddr)>,
    session_on: Option<u64>,
    session_rules: Vec<Rule>,
}

impl Default for FakeLedger {
    fn default() -> Self {
        FakeLedger {
            sessions: 0,
            rules: 0,
            aliases: 0,
            live: vec![],
            held: vec![],
            session_on: Some(CONN),
            session_rules: vec![],
        }
    }
}

impl Ledger for FakeLedger {
    fn sessions_of(&self, _uid: u32) -> usize {
        self.sessions
    }
    fn rules_of(&self, _uid: u32) -> usize {
        self.rules
    }
    fn aliases_of(&self, _uid: u32) -> usize {
        self.aliases
    }
    fn holder(&self, key: &RuleKey) -> Option<SessionId> {
        self.live.iter().find(|(k, _)| k == key).map(|(_, s)| *s)
    }
    fn holds_alias(&self, session: SessionId, ip: IpAddr) -> bool {
        self.held.contains(&(session, ip))
    }
    fn connection_of(&self, session: SessionId) -> Option<u64> {
        self.session_on.filter(|_| session == SessionId(1))
    }
    fn rule(&self, session: SessionId, pod: SocketAddr) -> Option<Rule> {
        self.session_rules
            .iter()
            .find(|r| session == SessionId(1) && r.pod == pod)
            .copied()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn map(pod_ip: &str, local_ip: Option<&str>) -> AddMapping {
    AddMapping {
        session: SessionId(1),
        pod_ip: ip(pod_ip),
        pod_port: 4369,
        local_ip: local_ip.map(ip),
        local_port: 40000,
    }
}

enum Req {
    Connect(Connections),
    Open,
    Map(AddMapping),
    Unmap(&'static str),
    Alias(&'static str),
    Unalias(&'static str),
    List,
}

/// What a case expects: `Ok(target)` (the rule's target, or "" for non-mapping requests), or
/// the gRPC code and a piece of the message that tells the person what to do.
type Expect = Result<&'static str, (Code, &'static str)>;

struct Case {
    name: &'static str,
    caller: Caller,
    req: Req,
    ledger: FakeLedger,
    aliases_on: bool,
    expect: Expect,
}

fn case(name: &'static str, caller: Caller, req: Req, expect: Expect) -> Case {
    Case {
        name,
        caller,
        req,
        ledger: FakeLedger::default(),
        aliases_on: false,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Code::{AlreadyExists, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted};
    let root = Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: 1,
    };
    let primary = Caller {
        uid: 1000,
        gid: GROUP_GID,
        groups: vec![],
        pid: 5,
    };
    let live = |uid| FakeLedger {
        live: vec![(
            RuleKey {
                uid,
                pod: "10.244.1.8:4369".parse().unwrap(),
            },
            SessionId(9),
        )],
        rules: 1,
        ..FakeLedger::default()
    };
    let with = |mut c: Case, ledger: FakeLedger| {
        c.ledger = ledger;
        c
    };
    let aliases = |mut c: Case| {
        c.aliases_on = true;
        c
    };
    vec![
        // Who may use the helper at all.
        case("root may open a session", root.clone(), Req::Open, Ok("")),
        case(
            "a listed uid may open a session",
            outsider(900),
            Req::Open,
            Ok(""),
        ),
        case(
            "a supplementary member may open a session",
            member(1000),
            Req::Open,
            Ok(""),
        ),
        case(
            "a primary-group member may open a session",
            primary,
            Req::Open,
            Ok(""),
        ),
        case(
            "an outsider may not open a session",
            outsider(1001),
            Req::Open,
            Err((PermissionDenied, "usermod -aG erlbridge")),
        ),
        case(
            "an outsider may not map",
            outsider(1001),
            Req::Map(map("10.244.1.8", None)),
            Err((PermissionDenied, "log in again")),
        ),
        case(
            "an outsider may not alias",
            outsider(1001),
            Req::Alias("10.244.1.8"),
            Err((PermissionDenied, "not in group erlbridge")),
        ),
        with(
            case("below the session quota", member(1000), Req::Open, Ok("")),
            FakeLedger {
                sessions: 1,
                ..FakeLedger::default()
            },
        ),
        with(
            case(
                "at the session quota",
                member(1000),
                Req::Open,
                Err((ResourceExhausted, "max_sessions_per_uid")),
            ),
            FakeLedger {
                sessions: 2,
                ..FakeLedger::default()
            },
        ),
        with(
            case(
                "root has quotas too",
                root.clone(),
                Req::Open,
                Err((ResourceExhausted, "max_sessions_per_uid")),
            ),
            FakeLedger {
                sessions: 2,
                ..FakeLedger::default()
            },
        ),
        // Mappings that are fine.
        case(
            "IPv4 pod to the default loopback",
            member(1000),
            Req::Map(map("10.244.1.8", None)),
            Ok("127.0.0.1:40000"),
        ),
        case(
            "IPv6 pod to the default loopback",
            member(1000),
            Req::Map(map("fd00::8", None)),
            Ok("[::1]:40000"),
        ),
        case(
            "IPv4 pod to another loopback",
            member(1000),
            Req::Map(map("10.244.1.8", Some("127.0.0.2"))),
            Ok("127.0.0.2:40000"),
        ),
        case(
            "IPv6 pod to ::1",
            member(1000),
            Req::Map(map("fd00::8", Some("::1"))),
            Ok("[::1]:40000"),
        ),
        case(
            "a pod in 172.16.0.0/12",
            member(1000),
            Req::Map(map("172.31.255.254", None)),
            Ok("127.0.0.1:40000"),
        ),
        case(
            "a pod in 192.168.0.0/16",
            member(1000),
            Req::Map(map("192.168.7.7", None)),
            Ok("127.0.0.1:40000"),
        ),
        case(
            "a pod in 100.64.0.0/10",
            member(1000),
            Req::Map(map("100.64.0.1", None)),
            Ok("127.0.0.1:40000"),
        ),
        case(
            "root maps like anyone",
            root,
            Req::Map(map("10.1.2.3", None)),
            Ok("127.0.0.1:40000"),
        ),
        with(
            case(
                "the same pod for another uid",
                member(1000),
                Req::Map(map("10.244.1.8", None)),
                Ok("127.0.0.1:40000"),
            ),
            live(1001),
        ),
        with(
            case(
                "below the rule quota",
                member(1000),
                Req::Map(map("10.244.1.9", None)),
                Ok("127.0.0.1:40000"),
            ),
            FakeLedger {
                rules: 3,
                ..FakeLedger::default()
            },
        ),
        // Addresses that are never a pod's.
        case(
            "loopback pod",
            member(1000),
            Req::Map(map("127.0.0.1", None)),
            Err((InvalidArgument, "loopback")),
        ),
        case(
            "other loopback pod",
            member(1000),
            Req::Map(map("127.1.2.3", None)),
            Err((InvalidArgument, "loopback")),
        ),
        case(
            "IPv6 loopback pod",
            member(1000),
            Req::Map(map("::1", None)),
            Err((InvalidArgument, "loopback")),
        ),
        case(
            "unspecified pod",
            member(1000),
            Req::Map(map("0.0.0.0", None)),
            Err((InvalidArgument, "unspecified")),
        ),
        case(
            "IPv6 unspecified pod",
            member(1000),
            Req::Map(map("::", None)),
            Err((InvalidArgument, "unspecified")),
        ),
        case(
            "multicast pod",
            member(1000),
            Req::Map(map("224.0.0.251", None)),
            Err((InvalidArgument, "multicast")),
        ),
        case(
            "IPv6 multicast pod",
            member(1000),
            Req::Map(map("ff02::1", None)),
            Err((InvalidArgument, "multicast")),
        ),
        case(
            "broadcast pod",
            member(1000),
            Req::Map(map("255.255.255.255", None)),
            Err((InvalidArgument, "broadcast")),
        ),
        case(
            "link-local pod",
            member(1000),
            Req::Map(map("169.254.169.254", None)),
            Err((InvalidArgument, "link-local")),
        ),
        case(
            "IPv6 link-local pod",
            member(1000),
            Req::Map(map("fe80::1", None)),
            Err((InvalidArgument, "link-local")),
        ),
        case(
            "IPv4-mapped pod",
            member(1000),
            Req::Map(map("::ffff:10.244.1.8", None)),
            Err((InvalidArgument, "plain IPv4 (10.244.1.8)")),
        ),
        case(
            "a host address as pod",
            member(1000),
            Req::Map(map(HOST, None)),
            Err((PermissionDenied, "address of this host")),
        ),
        case(
            "a public address",
            member(1000),
            Req::Map(map("8.8.8.8", None)),
            Err((PermissionDenied, "allowed_cidrs")),
        ),
        case(
            "just outside 172.16.0.0/12",
            member(1000),
            Req::Map(map("172.32.0.1", None)),
            Err((PermissionDenied, "allowed_cidrs")),
        ),
        case(
            "a public IPv6 address",
            member(1000),
            Req::Map(map("2001:db8::1", None)),
            Err((PermissionDenied, "allowed_cidrs")),
        ),
        // Targets.
        case(
            "a non-loopback target",
            member(1000),
            Req::Map(map("10.244.1.8", Some("10.0.0.1"))),
            Err((InvalidArgument, "not a loopback")),
        ),
        case(
            "the unspecified target",
            member(1000),
            Req::Map(map("10.244.1.8", Some("0.0.0.0"))),
            Err((InvalidArgument, "not a loopback")),
        ),
        case(
            "a host address target",
            member(1000),
            Req::Map(map("10.244.1.8", Some(HOST))),
            Err((InvalidArgument, "not a loopback")),
        ),
        case(
            "IPv4 pod, IPv6 target",
            member(1000),
            Req::Map(map("10.244.1.8", Some("::1"))),
            Err((InvalidArgument, "different IP families")),
        ),
        case(
            "IPv6 pod, IPv4 target",
            member(1000),
            Req::Map(map("fd00::8", Some("127.0.0.1"))),
            Err((InvalidArgument, "different IP families")),
        ),
        // State.
        with(
            case(
                "a duplicate of a live rule",
                member(1000),
                Req::Map(map("10.244.1.8", None)),
                Err((
                    AlreadyExists,
                    "already redirects 10.244.1.8:4369 (in session 9)",
                )),
            ),
            live(1000),
        ),
        with(
            case(
                "at the rule quota",
                member(1000),
                Req::Map(map("10.244.1.9", None)),
                Err((ResourceExhausted, "max_rules_per_uid")),
            ),
            FakeLedger {
                rules: 4,
                ..FakeLedger::default()
            },
        ),
        // Aliases.
        case(
            "aliases switched off",
            member(1000),
            Req::Alias("10.244.1.8"),
            Err((PermissionDenied, "aliases = false")),
        ),
        aliases(case(
            "an alias when allowed",
            member(1000),
            Req::Alias("10.244.1.8"),
            Ok(""),
        )),
        aliases(case(
            "an IPv6 alias",
            member(1000),
            Req::Alias("fd00::8"),
            Err((InvalidArgument, "IPv4 only")),
        )),
        aliases(case(
            "a loopback alias",
            member(1000),
            Req::Alias("127.0.0.5"),
            Err((InvalidArgument, "loopback")),
        )),
        aliases(case(
            "a host address alias",
            member(1000),
            Req::Alias(HOST),
            Err((PermissionDenied, "address of this host")),
        )),
        aliases(case(
            "an alias outside the networks",
            member(1000),
            Req::Alias("1.1.1.1"),
            Err((PermissionDenied, "allowed_cidrs")),
        )),
        aliases(with(
            case(
                "an alias the session holds",
                member(1000),
                Req::Alias("10.244.1.8"),
                Err((AlreadyExists, "already holds")),
            ),
            FakeLedger {
                held: vec![(SessionId(1), ip("10.244.1.8"))],
                ..FakeLedger::default()
            },
        )),
        aliases(with(
            case(
                "at the alias quota",
                member(1000),
                Req::Alias("10.244.1.8"),
                Err((ResourceExhausted, "max_aliases_per_uid")),
            ),
            FakeLedger {
                aliases: 2,
                ..FakeLedger::default()
            },
        )),
        aliases(with(
            case(
                "another session's alias counts towards the quota too",
                member(1000),
                Req::Alias("10.244.1.9"),
                Err((ResourceExhausted, "max_aliases_per_uid")),
            ),
            FakeLedger {
                aliases: 2,
                held: vec![(SessionId(2), ip("10.244.1.8"))],
                ..FakeLedger::default()
            },
        )),
        with(
            case(
                "releasing a held alias",
                member(1000),
                Req::Unalias("10.244.1.8"),
                Ok(""),
            ),
            FakeLedger {
                held: vec![(SessionId(1), ip("10.244.1.8"))],
                ..FakeLedger::default()
            },
        ),
        case(
            "releasing an alias the session does not hold",
            member(1000),
            Req::Unalias("10.244.1.8"),
            Err((NotFound, "holds no alias 10.244.1.8")),
        ),
        with(
            case(
                "an outsider may not release an alias",
                outsider(1001),
                Req::Unalias("10.244.1.8"),
                Err((PermissionDenied, "not in group")),
            ),
            FakeLedger {
                held: vec![(SessionId(1), ip("10.244.1.8"))],
                ..FakeLedger::default()
            },
        ),
        // Sessions belong to their connection.
        with(
            case(
                "mapping in another connection's session",
                member(1000),
                Req::Map(map("10.244.1.8", None)),
                Err((NotFound, "no session 1 on this connection")),
            ),
            FakeLedger {
                session_on: Some(CONN + 1),
                ..FakeLedger::default()
            },
        ),
        aliases(with(
            case(
                "an alias in a session that ended",
                member(1000),
                Req::Alias("10.244.1.8"),
                Err((NotFound, "OpenSession")),
            ),
            FakeLedger {
                session_on: None,
                ..FakeLedger::default()
            },
        )),
        // Removals.
        with(
            case(
                "removing the session's mapping",
                member(1000),
                Req::Unmap("10.244.1.8:4369"),
                Ok("127.0.0.1:40000"),
            ),
            session_rule(1000),
        ),
        case(
            "removing a mapping the session does not have",
            member(1000),
            Req::Unmap("10.244.1.8:4369"),
            Err((NotFound, "no mapping for 10.244.1.8:4369")),
        ),
        with(
            case(
                "removing a mapping of another connection's session",
                member(1000),
                Req::Unmap("10.244.1.8:4369"),
                Err((NotFound, "no session 1")),
            ),
            FakeLedger {
                session_on: Some(CONN + 1),
                ..session_rule(1000)
            },
        ),
        with(
            case(
                "an outsider may not remove",
                outsider(1001),
                Req::Unmap("10.244.1.8:4369"),
                Err((PermissionDenied, "usermod -aG erlbridge")),
            ),
            session_rule(1001),
        ),
        // Listing.
        case("a member may list", member(1000), Req::List, Ok("")),
        case(
            "an outsider may not list",
            outsider(1001),
            Req::List,
            Err((PermissionDenied, "not in group")),
        ),
        // Connections.
        case(
            "a first connection",
            member(1000),
            Req::Connect(Connections::default()),
            Ok("serve"),
        ),
        case(
            "below both caps",
            member(1000),
            Req::Connect(Connections {
                of_uid: 2,
                total: 4,
            }),
            Ok("serve"),
        ),
        case(
            "at the cap per uid",
            member(1000),
            Req::Connect(Connections {
                of_uid: 3,
                total: 3,
            }),
            Err((ResourceExhausted, "max_connections_per_uid in helperd.toml")),
        ),
        case(
            "root at the cap per uid",
            root_caller(),
            Req::Connect(Connections {
                of_uid: 3,
                total: 3,
            }),
            Err((ResourceExhausted, "max_connections_per_uid")),
        ),
        case(
            "another uid's first connection while the total has room",
            member(1001),
            Req::Connect(Connections {
                of_uid: 0,
                total: 4,
            }),
            Ok("serve"),
        ),
        case(
            "at the total cap",
            member(1001),
            Req::Connect(Connections {
                of_uid: 0,
                total: 5,
            }),
            Err((ResourceExhausted, "max_connections in helperd.toml")),
        ),
        case(
            "an outsider's connection is refused whatever the counts",
            outsider(1002),
            Req::Connect(Connections::default()),
            Err((PermissionDenied, "not in group erlbridge")),
        ),
        case(
            "an outsider over a cap still gets the group refusal",
            outsider(1002),
            Req::Connect(Connections {
                of_uid: 9,
                total: 9,
            }),
            Err((PermissionDenied, "usermod -aG")),
        ),
    ]
}

fn root_caller() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: 1,
    }
}

/// A ledger where session 1 holds `uid`'s mapping of 10.244.1.8:4369.
fn session_rule(uid: u32) -> FakeLedger {
    FakeLedger {
        session_rules: vec![Rule {
            uid,
            pod: "10.244.1.8:4369".parse().unwrap(),
            target: "127.0.0.1:40000".parse().unwrap(),
        }],
        ..FakeLedger::default()
    }
}

#[test]
fn the_policy_table() {
    let hosts = [ip(HOST), ip("fd00::1:15")];
    let cases = cases();
    assert!(cases.len() >= 60, "the table should stay broad");
    for c in cases {
        let mut policy = policy();
        policy.aliases = c.aliases_on;
        let peer = Peer {
            conn: CONN,
            caller: c.caller.clone(),
        };
        let alias = |a: &str| Alias {
            session: SessionId(1),
            ip: ip(a),
        };
        let outcome: Result<String, Error> = match &c.req {
            Req::Connect(open) => match policy.connect(&c.caller, *open) {
                Admission::Serve => Ok("serve".to_owned()),
                Admission::Refused(r) => {
                    assert!(policy.admit(&c.caller).is_err(), "{}", c.name);
                    Err(r)
                }
                Admission::OverCap(r) => {
                    assert!(policy.admit(&c.caller).is_ok(), "{}", c.name);
                    Err(r)
                }
            },
            Req::Open => policy
                .open_session(&c.caller, &c.ledger)
                .map(|()| String::new()),
            Req::Map(m) => policy.add_mapping(&peer, m, &hosts, &c.ledger).map(|rule| {
                assert_eq!(rule.uid, c.caller.uid, "{}", c.name);
                rule.target.to_string()
            }),
            Req::Unmap(pod) => {
                let pod: SocketAddr = pod.parse().unwrap();
                let req = RemoveMapping {
                    session: SessionId(1),
                    pod_ip: pod.ip(),
                    pod_port: pod.port(),
                };
                policy
                    .remove_mapping(&peer, &req, &c.ledger)
                    .map(|rule| rule.target.to_string())
            }
            Req::Alias(a) => policy
                .add_alias(&peer, &alias(a), &hosts, &c.ledger)
                .map(|_| String::new()),
            Req::Unalias(a) => policy
                .remove_alias(&peer, &alias(a), &c.ledger)
                .map(|_| String::new()),
            Req::List => policy.admit(&c.caller).map(|()| String::new()),
        }
        .map_err(Error::from);
        match (outcome, c.expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", c.name),
            (Err(err), Err((code, hint))) => {
                let status = tonic::Status::from(err);
                assert_eq!(status.code(), code, "{}: {}", c.name, status.message());
                assert!(
                    status.message().contains(hint),
                    "{}: {:?} lacks {hint:?}",
                    c.name,
                    status.message()
                );
            }
            (got, want) => panic!("{}: got {got:?}, wanted {want:?}", c.name),
        }
    }
}

#[test]
fn a_missing_group_admits_only_root_and_listed_uids() {
    let mut policy = policy();
    policy.group_gid = None;
    assert!(
        policy
            .admit(&Caller {
                uid: 0,
                gid: 0,
                groups: vec![],
                pid: 1
            })
            .is_ok()
    );
    assert!(policy.admit(&outsider(900)).is_ok());
    let refusal = policy.admit(&member(1000)).expect_err("no group, no entry");
    assert!(
        refusal.to_string().contains("groupadd --system erlbridge"),
        "{refusal}"
    );
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::from(n.to_be_bytes())),
        any::<u128>().prop_map(|n| IpAddr::from(n.to_be_bytes())),
        // Bias towards the allowed networks and the edges, so plenty of requests pass.
        (0u32..(1 << 24)).prop_map(|n| IpAddr::from((0x0a00_0000 | n).to_be_bytes())),
        any::<u64>().prop_map(|n| IpAddr::from((0xfd00u128 << 112 | u128::from(n)).to_be_bytes())),
        Just(ip("127.0.0.1")),
        Just(ip("::1")),
        Just(ip(HOST)),
    ]
}

proptest! {
    #[test]
    fn no_accepted_mapping_escapes_the_callers_uid_or_loopback(
        uid in any::<u32>(),
        gid in any::<u32>(),
        in_group in any::<bool>(),
        pod_ip in any_ip(),
        pod_port in 1u16..,
        local_ip in proptest::option::of(any_ip()),
        local_port in 1u16..,
        rules in 0usize..6,
    ) {
        let policy = policy();
        let caller = Caller { uid, gid, groups: if in_group { vec![GROUP_GID] } else { vec![] }, pid: 1 };
        let req = AddMapping { session: SessionId(1), pod_ip, pod_port, local_ip, local_port };
        let ledger = FakeLedger { rules, ..FakeLedger::default() };
        let hosts = [ip(HOST)];
        let peer = Peer { conn: CONN, caller: caller.clone() };
        if let Ok(rule) = policy.add_mapping(&peer, &req, &hosts, &ledger) {
            prop_assert_eq!(rule.uid, uid);
            prop_assert!(rule.target.ip().is_loopback());
            prop_assert_eq!(rule.target.is_ipv4(), rule.pod.is_ipv4());
            prop_assert_eq!(rule.pod, SocketAddr::new(pod_ip, pod_port));
            prop_assert!(policy.allowed_cidrs.iter().any(|n| n.contains(&pod_ip)));
            prop_assert!(!hosts.contains(&pod_ip));
            prop_assert!(rules < policy.max_rules_per_uid);
            prop_assert!(policy.admit(&caller).is_ok());
        }
    }
}
