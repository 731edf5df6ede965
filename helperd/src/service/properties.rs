//! Properties of the service at its request boundary, against the recording backend: whatever
//! bytes arrive as a request body, nothing panics and only a valid, allowed request reaches
//! the backend; and whatever valid calls come in whatever order, the registry and what the
//! backend installed stay equal after every step.

use std::collections::BTreeSet;
use std::net::IpAddr;

use erlbridge_proto::v1::helper_server::Helper as _;
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::config::Config;
use crate::fake::{Call, Recording};

const HOST: &str = "10.0.2.15";
const UID: u32 = 4000;

fn helper(config: &str) -> (Helper<Recording, Recording>, Recording) {
    let config = Config::parse(std::path::Path::new("helperd.toml"), config).expect("config");
    let fake = Recording::with_hosts(vec![HOST.parse().unwrap()]);
    let policy = Policy::new(&config, Some(4242));
    let helper = block_on(Helper::start(policy, fake.clone(), fake.clone())).expect("start");
    (helper, fake)
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn peer(conn: u64, uid: u32) -> Peer {
    Peer {
        conn,
        caller: Caller {
            uid,
            gid: uid,
            groups: vec![4242],
            pid: 1,
        },
    }
}

fn request<T>(peer: &Peer, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(peer.clone());
    request
}

/// Address text: mostly addresses (allowed or not), some garbage.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 1u8..5).prop_map(|(a, b)| format!("10.244.{a}.{b}")),
        Just(HOST.to_owned()),
        Just("127.0.0.1".to_owned()),
        Just("fd00::8".to_owned()),
        Just("::1".to_owned()),
        Just("8.8.8.8".to_owned()),
        Just(String::new()),
        "[0-9a-f:./]{0,70}",
        any::<String>(),
    ]
}

fn port() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(4369u32),
        Just(5555),
        Just(0),
        1u32..70_000,
        any::<u32>()
    ]
}

fn session_id() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(2), any::<u64>()]
}

/// Which RPC a body is sent to.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    WhoAmI,
    Open,
    Map,
    Unmap,
    Alias,
    Unalias,
    List,
}

/// A request body: a message some client could have built, then possibly mangled.
fn body() -> impl Strategy<Value = (Rpc, Vec<u8>)> {
    let built = prop_oneof![
        Just((Rpc::WhoAmI, pb::WhoAmIRequest {}.encode_to_vec())),
        "\\PC{0,140}"
            .prop_map(|label| (Rpc::Open, pb::OpenSessionRequest { label }.encode_to_vec())),
        (session_id(), address(), port(), address(), port()).prop_map(
            |(session_id, pod_ip, pod_port, local_ip, local_port)| (
                Rpc::Map,
                pb::AddMappingRequest {
                    session_id,
                    pod_ip,
                    pod_port,
                    local_port,
                    local_ip
                }
                .encode_to_vec()
            )
        ),
        (session_id(), address(), port()).prop_map(|(session_id, pod_ip, pod_port)| (
            Rpc::Unmap,
            pb::RemoveMappingRequest {
                session_id,
                pod_ip,
                pod_port
            }
            .encode_to_vec()
        )),
        (session_id(), address()).prop_map(|(session_id, ip)| (
            Rpc::Alias,
            pb::AddAliasRequest { session_id, ip }.encode_to_vec()
        )),
        (session_id(), address()).prop_map(|(session_id, ip)| (
            Rpc::Unalias,
            pb::RemoveAliasRequest { session_id, ip }.encode_to_vec()
        )),
        Just((Rpc::List, pb::ListSessionsRequest {}.encode_to_vec())),
    ];
    let rpc = prop_oneof![
        Just(Rpc::WhoAmI),
        Just(Rpc::Open),
        Just(Rpc::Map),
        Just(Rpc::Unmap),
        Just(Rpc::Alias),
        Just(Rpc::Unalias),
        Just(Rpc::List),
    ];
    prop_oneof![
        built.clone(),
        // The same, with bytes flipped, cut off or added.
        (built, any::<usize>(), any::<u8>(), 0usize..3).prop_map(
            |((rpc, mut bytes), at, byte, how)| {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] ^= byte | 1,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, byte),
                }
                (rpc, bytes)
            }
        ),
        (rpc, proptest::collection::vec(any::<u8>(), 0..200)),
    ]
}

/// Decodes `bytes` as `rpc`'s request (as the gRPC codec would) and calls the service with it.
/// `None` when prost refuses the bytes; else whether the call succeeded and whether the
/// request passed the TryFrom boundary.
async fn call(
    helper: &Helper<Recording, Recording>,
    peer: &Peer,
    rpc: Rpc,
    bytes: &[u8],
) -> Option<(bool, bool)> {
    fn valid<M, T: TryFrom<M>>(message: M) -> bool {
        T::try_from(message).is_ok()
    }
    Some(match rpc {
        Rpc::WhoAmI => {
            let m = pb::WhoAmIRequest::decode(bytes).ok()?;
            (helper.who_am_i(request(peer, m)).await.is_ok(), true)
        }
        Rpc::Open => {
            let m = pb::OpenSessionRequest::decode(bytes).ok()?;
            let ok = valid::<_, OpenSession>(m.clone());
            // Dropping the stream ends the session again: that is tested elsewhere.
            (helper.open_session(request(peer, m)).await.is_ok(), ok)
        }
        Rpc::Map => {
            let m = pb::AddMappingRequest::decode(bytes).ok()?;
            let ok = valid::<_, AddMapping>(m.clone());
            (helper.add_mapping(request(peer, m)).await.is_ok(), ok)
        }
        Rpc::Unmap => {
            let m = pb::RemoveMappingRequest::decode(bytes).ok()?;
            let ok = valid::<_, RemoveMapping>(m.clone());
            (helper.remove_mapping(request(peer, m)).await.is_ok(), ok)
        }
        Rpc::Alias => {
            let m = pb::AddAliasRequest::decode(bytes).ok()?;
            let ok = valid::<_, Alias>(m.clone());
            (helper.add_alias(request(peer, m)).await.is_ok(), ok)
        }
        Rpc::Unalias => {
            let m = pb::RemoveAliasRequest::decode(bytes).ok()?;
            let ok = valid::<_, Alias>(m.clone());
            (helper.remove_alias(request(peer, m)).await.is_ok(), ok)
        }
        Rpc::List => {
            let m = pb::ListSessionsRequest::decode(bytes).ok()?;
            (helper.list_sessions(request(peer, m)).await.is_ok(), true)
        }
    })
}

/// Whether a change is one the policy could have allowed UID: its own traffic, from an
/// allowed pod address, to loopback; an alias of such an address.
fn allowed(change: &Call) -> bool {
    let pod_address = |ip: IpAddr| {
        let allowed: ipnet::IpNet = if ip.is_ipv4() {
            "10.0.0.0/8".parse().unwrap()
        } else {
            "fd00::/8".parse().unwrap()
        };
        allowed.contains(&ip) && ip != HOST.parse::<IpAddr>().unwrap()
    };
    match change {
        Call::Add(rule) => {
            rule.uid == UID && rule.target.ip().is_loopback() && pod_address(rule.pod.ip())
        }
        Call::AliasAdd(ip) => ip.is_ipv4() && pod_address(*ip),
        Call::Remove(_) | Call::AliasRemove(_) => true,
        Call::Reset | Call::Teardown | Call::AliasReset => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bodies_never_reach_the_backend_unless_valid(
        bodies in proptest::collection::vec(body(), 1..12),
    ) {
        // Only the networks `allowed` knows.
        let (helper, fake) = helper("aliases = true\nallowed_cidrs = [\"10.0.0.0/8\", \"fd00::/8\"]");
        let owner = peer(1, UID);
        block_on(async {
            // Session 1 exists on connection 1, so well-formed requests can get through.
            let opened = helper
                .open_session(request(&owner, pb::OpenSessionRequest { label: "p".into() }))
                .await;
            prop_assert!(opened.is_ok());
            for (rpc, bytes) in &bodies {
                let before = fake.calls().len();
                let outcome = call(&helper, &owner, *rpc, bytes).await;
                let changed = fake.calls().len() != before;
                match outcome {
                    None => prop_assert!(!changed, "undecodable bytes reached the backend"),
                    Some((succeeded, valid)) => {
                        prop_assert!(valid || !succeeded, "{rpc:?}: an invalid request succeeded");
                        prop_assert!(!changed || (valid && succeeded), "{rpc:?}: {:?}", fake.calls());
                    }
                }
                for change in &fake.calls()[before..] {
                    prop_assert!(allowed(change), "{rpc:?} made {change:?}");
                }
            }
            Ok(())
        })?;
    }
}

/// One step of a client's life, on one of three connections (two uids).
#[derive(Debug, Clone)]
enum Step {
    Open { conn: u64 },
    End { session: u64 },
    Map { session: u64, pod: u8, port: u16 },
    Unmap { session: u64, pod: u8, port: u16 },
    Alias { session: u64, pod: u8 },
    Unalias { session: u64, pod: u8 },
    Failing(bool),
}

fn step() -> impl Strategy<Value = Step> {
    let session = 1u64..6;
    let pod = 1u8..5;
    let port = prop_oneof![Just(4369u16), Just(5555)];
    prop_oneof![
        (0u64..3).prop_map(|conn| Step::Open { conn }),
        session.clone().prop_map(|session| Step::End { session }),
        (session.clone(), pod.clone(), port.clone()).prop_map(|(session, pod, port)| Step::Map {
            session,
            pod,
            port
        }),
        (session.clone(), pod.clone(), port).prop_map(|(session, pod, port)| Step::Unmap {
            session,
            pod,
            port
        }),
        (session.clone(), pod.clone()).prop_map(|(session, pod)| Step::Alias { session, pod }),
        (session, pod).prop_map(|(session, pod)| Step::Unalias { session, pod }),
        prop_oneof![9 => Just(false), 1 => Just(true)].prop_map(Step::Failing),
    ]
}

/// What the registry says is installed: every session's rules, and every held alias.
async fn recorded(helper: &Helper<Recording, Recording>) -> (BTreeSet<Rule>, BTreeSet<IpAddr>) {
    let registry = helper.shared.registry.lock().await;
    let rules = registry
        .sessions()
        .flat_map(|s| s.rules.values().copied())
        .collect();
    (rules, registry.aliases().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_registry_and_the_backend_agree_after_every_step(
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let (helper, fake) = helper(
            "aliases = true\nmax_rules_per_uid = 5\nmax_sessions_per_uid = 3\nmax_aliases_per_uid = 3",
        );
        let peers = [peer(0, UID), peer(1, UID), peer(2, UID + 1)];
        block_on(async {
            // Which connection each session was opened on; its stream keeps it open.
            let mut sessions = std::collections::BTreeMap::new();
            for step in &steps {
                let on = |session: &u64| sessions.get(session).map_or(&peers[0], |(conn, _)| &peers[*conn as usize]);
                let pod = |n: u8| format!("10.244.0.{n}");
                match step.clone() {
                    Step::Open { conn } => {
                        let peer = &peers[conn as usize];
                        let open = pb::OpenSessionRequest { label: "p".into() };
                        if let Ok(response) = helper.open_session(request(peer, open)).await {
                            let mut stream = response.into_inner();
                            let opened = tokio_stream::StreamExt::next(&mut stream).await;
                            let Some(Ok(pb::SessionEvent { event: Some(pb::session_event::Event::Opened(o)) })) = opened else {
                                return Err(TestCaseError::fail("no SessionOpened"));
                            };
                            sessions.insert(o.session_id, (conn, stream));
                        }
                    }
                    Step::End { session } => {
                        if sessions.remove(&session).is_some() {
                            // A session's end is not a request that can be refused: its removal
                            // failing is only logged, so it runs with the backend working.
                            let failing = fake.failing();
                            fake.fail(false);
                            helper.close(SessionId(session)).await;
                            fake.fail(failing);
                        }
                    }
                    Step::Map { session, pod: n, port } => {
                        let m = pb::AddMappingRequest { session_id: session, pod_ip: pod(n), pod_port: port.into(), local_port: 40000, local_ip: String::new() };
                        let _ = helper.add_mapping(request(on(&session), m)).await;
                    }
                    Step::Unmap { session, pod: n, port } => {
                        let m = pb::RemoveMappingRequest { session_id: session, pod_ip: pod(n), pod_port: port.into() };
                        let _ = helper.remove_mapping(request(on(&session), m)).await;
                    }
                    Step::Alias { session, pod: n } => {
                        let m = pb::AddAliasRequest { session_id: session, ip: pod(n) };
                        let _ = helper.add_alias(request(on(&session), m)).await;
                    }
                    Step::Unalias { session, pod: n } => {
                        let m = pb::RemoveAliasRequest { session_id: session, ip: pod(n) };
                        let _ = helper.remove_alias(request(on(&session), m)).await;
                    }
                    Step::Failing(failing) => fake.fail(failing),
                }
                let installed = fake.installed().map_err(TestCaseError::fail)?;
                prop_assert_eq!(&installed, &recorded(&helper).await, "after {:?}", step);
            }
            // Ending every session leaves nothing installed.
            fake.fail(false);
            for (session, _) in std::mem::take(&mut sessions) {
                helper.close(SessionId(session)).await;
            }
            let installed = fake.installed().map_err(TestCaseError::fail)?;
            prop_assert_eq!(installed, (BTreeSet::new(), BTreeSet::new()));
            Ok(())
        })?;
    }
}
