//! The whole service over a real Unix socket, against the recording backend: what reaches the
//! "kernel", what the caller is told, and that a session's end removes what it added.

use std::net::IpAddr;
use std::time::Duration;

use erlbridge_proto::v1 as pb;
use erlbridge_proto::v1::helper_client::HelperClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::*;
use crate::config::Config;
use crate::fake::{Call, Recording};
use crate::server;

const HOST: &str = "10.0.2.15";

struct Fixture {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    fake: Recording,
    _server: tokio::task::JoinHandle<()>,
}

async fn start(config_text: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("helper.sock");
    let config = Config::parse(std::path::Path::new("helperd.toml"), config_text).expect("config");
    let fake = Recording::with_hosts(vec![HOST.parse().unwrap(), "127.0.0.1".parse().unwrap()]);
    let helper = Helper::start(Policy::new(&config, Some(4242)), fake.clone(), fake.clone())
        .await
        .expect("start");
    let listener = server::bind(&socket, None, false).expect("bind");
    let server = tokio::spawn(async move {
        helper
            .serve(listener, config.idle_timeout, std::future::pending())
            .await
            .expect("serve");
    });
    Fixture {
        _dir: dir,
        socket,
        fake,
        _server: server,
    }
}

impl Fixture {
    async fn client(&self) -> HelperClient<Channel> {
        erlbridge_proto::connect(&self.socket)
            .await
            .expect("connect")
    }

    fn adds(&self) -> Vec<Rule> {
        self.fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Add(rule) => Some(rule),
                _ => None,
            })
            .collect()
    }

    fn removed(&self) -> Vec<Rule> {
        self.fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Remove(rules) => Some(rules),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Waits up to a second for the recorded calls to satisfy `done`.
    async fn eventually(&self, what: &str, done: impl Fn(&[Call]) -> bool) {
        for _ in 0..100 {
            if done(&self.fake.calls()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 1 s: {:?}", self.fake.calls());
    }
}

async fn open(client: &mut HelperClient<Channel>) -> (u64, Streaming<pb::SessionEvent>) {
    let mut events = client
        .open_session(pb::OpenSessionRequest {
            label: "test".into(),
        })
        .await
        .expect("open")
        .into_inner();
    match events.next().await {
        Some(Ok(pb::SessionEvent {
            event: Some(pb::session_event::Event::Opened(opened)),
        })) => (opened.session_id, events),
        other => panic!("expected SessionOpened, got {other:?}"),
    }
}

async fn sessions(client: &mut HelperClient<Channel>) -> Vec<pb::SessionInfo> {
    client
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .sessions
}

fn mapping(session_id: u64, pod_ip: &str, pod_port: u32, local_port: u32) -> pb::AddMappingRequest {
    pb::AddMappingRequest {
        session_id,
        pod_ip: pod_ip.into(),
        pod_port,
        local_port,
        local_ip: String::new(),
    }
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[tokio::test]
async fn whoami_reports_the_kernels_view_and_the_policy() {
    let f = start("max_rules_per_uid = 9").await;
    let reply = f
        .client()
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    let caller = reply.caller.expect("caller");
    assert_eq!(caller.uid, me());
    assert_eq!(caller.pid, std::process::id());
    assert_eq!(reply.api_version, 1);
    assert_eq!(reply.helper_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(reply.policy.expect("policy").max_rules_per_uid, 9);
}

#[tokio::test]
async fn a_session_end_removes_its_rules() {
    let f = start("allowed_uids = [0]").await;
    let mut client = f.client().await;
    let (id, events) = open(&mut client).await;
    let added = client
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("granted")
        .into_inner()
        .mapping
        .expect("mapping");
    assert_eq!(
        (added.uid, added.local_ip.as_str(), added.local_port),
        (me(), "127.0.0.1", 40000)
    );
    client
        .add_mapping(mapping(id, "fd00::8", 5555, 40001))
        .await
        .expect("granted");
    let rules = f.adds();
    assert_eq!(rules.len(), 2);
    assert!(
        rules
            .iter()
            .all(|r| r.uid == me() && r.target.ip().is_loopback())
    );

    let listed = sessions(&mut client).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].mappings.len(), 2);

    drop(events);
    f.eventually("removal", |calls| {
        calls
            .iter()
            .any(|c| matches!(c, Call::Remove(r) if r.len() == 2))
    })
    .await;
    let mut removed = f.removed();
    removed.sort();
    let mut added = f.adds();
    added.sort();
    assert_eq!(removed, added);
    let listed = sessions(&mut client).await;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn a_dropped_connection_ends_its_sessions() {
    let f = start("").await;
    let mut client = f.client().await;
    let (id, events) = open(&mut client).await;
    client
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("granted");
    drop((client, events));
    f.eventually("removal", |calls| {
        calls.iter().any(|c| matches!(c, Call::Remove(_)))
    })
    .await;
}

#[tokio::test]
async fn sessions_are_bound_to_their_connection() {
    let f = start("").await;
    let mut owner = f.client().await;
    let (id, _events) = open(&mut owner).await;
    let mut other = f.client().await;
    let err = other
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect_err("another connection");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no session"), "{}", err.message());
    assert!(f.adds().is_empty());
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let f = start("max_rules_per_uid = 3").await;
    let mut client = f.client().await;
    let (id, _events) = open(&mut client).await;
    let long = "9".repeat(1 << 20);
    let bad = [
        (mapping(id, "127.0.0.1", 4369, 40000), Code::InvalidArgument),
        (mapping(id, HOST, 4369, 40000), Code::PermissionDenied),
        (mapping(id, "8.8.8.8", 4369, 40000), Code::PermissionDenied),
        (mapping(id, "10.244.1.8", 0, 40000), Code::InvalidArgument),
        (
            mapping(id, "10.244.1.8", 70000, 40000),
            Code::InvalidArgument,
        ),
        (mapping(id, "10.244.1.8", 4369, 0), Code::InvalidArgument),
        // Far past the request size limit: refused before it is decoded.
        (mapping(id, &long, 4369, 40000), Code::OutOfRange),
        (mapping(id + 1, "10.244.1.8", 4369, 40000), Code::NotFound),
        (
            pb::AddMappingRequest {
                local_ip: "::1".into(),
                ..mapping(id, "10.244.1.8", 4369, 40000)
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in bad {
        let shown = format!(
            "{}:{}",
            &req.pod_ip[..req.pod_ip.len().min(20)],
            req.pod_port
        );
        let err = client.add_mapping(req).await.expect_err(&shown);
        assert_eq!(err.code(), code, "{shown}: {}", err.message());
    }
    assert!(f.adds().is_empty(), "{:?}", f.adds());

    for port in 1..=3 {
        client
            .add_mapping(mapping(id, "10.244.1.8", port, 40000))
            .await
            .expect("within quota");
    }
    for port in 4..200 {
        let err = client
            .add_mapping(mapping(id, "10.244.1.8", port, 40000))
            .await
            .expect_err("past quota");
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
    let err = client
        .add_mapping(mapping(id, "10.244.1.8", 1, 40000))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(f.adds().len(), 3);
}

#[tokio::test]
async fn a_failed_kernel_change_is_not_recorded() {
    let f = start("").await;
    let mut client = f.client().await;
    let (id, _events) = open(&mut client).await;
    f.fake.fail(true);
    let err = client
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect_err("backend down");
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("nothing was added"),
        "{}",
        err.message()
    );
    f.fake.fail(false);
    let sessions = sessions(&mut client).await;
    assert!(sessions[0].mappings.is_empty());
    client
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("the same request succeeds once the backend works");
}

#[tokio::test]
async fn aliases_are_counted_across_sessions() {
    let f = start("aliases = true").await;
    let ip: IpAddr = "10.244.1.8".parse().unwrap();
    let alias = |session_id| pb::AddAliasRequest {
        session_id,
        ip: ip.to_string(),
    };
    let mut a = f.client().await;
    let mut b = f.client().await;
    let (sa, events_a) = open(&mut a).await;
    let (sb, _events_b) = open(&mut b).await;
    a.add_alias(alias(sa)).await.expect("first hold");
    b.add_alias(alias(sb)).await.expect("second hold");
    let adds = |calls: &[Call]| calls.iter().filter(|c| **c == Call::AliasAdd(ip)).count();
    assert_eq!(adds(&f.fake.calls()), 1);
    drop(events_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !f.fake.calls().contains(&Call::AliasRemove(ip)),
        "b still holds it"
    );
    b.remove_alias(pb::RemoveAliasRequest {
        session_id: sb,
        ip: ip.to_string(),
    })
    .await
    .expect("release");
    assert!(f.fake.calls().contains(&Call::AliasRemove(ip)));
}

#[tokio::test]
async fn aliases_are_refused_when_switched_off() {
    let f = start("").await;
    let mut client = f.client().await;
    let (id, _events) = open(&mut client).await;
    let err = client
        .add_alias(pb::AddAliasRequest {
            session_id: id,
            ip: "10.244.1.8".into(),
        })
        .await
        .expect_err("off");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        f.fake
            .calls()
            .iter()
            .all(|c| !matches!(c, Call::AliasAdd(_)))
    );
}

#[tokio::test]
async fn the_helper_starts_by_removing_what_a_previous_one_left() {
    let f = start("aliases = true").await;
    assert_eq!(f.fake.calls(), vec![Call::Reset, Call::AliasReset]);
}

#[tokio::test]
async fn a_connection_over_the_cap_per_uid_is_told_which_key_to_raise() {
    let f = start("max_sessions_per_uid = 1\nmax_connections_per_uid = 2").await;
    let mut first = f.client().await;
    let (id, _events) = open(&mut first).await;
    let mut second = f.client().await;
    second
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("within the cap");

    let mut third = f.client().await;
    let err = third
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message()
            .contains("max_connections_per_uid in helperd.toml"),
        "{}",
        err.message()
    );
    // The connections already served are never dropped to make room.
    first
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("the first connection's session still works");

    // A closed connection gives its place back.
    drop(second);
    let mut again = None;
    for _ in 0..100 {
        let mut client = f.client().await;
        if client.who_am_i(pb::WhoAmIRequest {}).await.is_ok() {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a place came free within 2 s");
}

#[tokio::test]
async fn a_connection_over_the_total_cap_is_told_which_key_to_raise() {
    let f =
        start("max_sessions_per_uid = 1\nmax_connections_per_uid = 1\nmax_connections = 1").await;
    let mut first = f.client().await;
    first.who_am_i(pb::WhoAmIRequest {}).await.expect("served");
    let err = f
        .client()
        .await
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted);
    // As root, the cap per uid (1) is reached first; both messages name their key.
    assert!(
        err.message().contains("max_connections"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_session_keeps_its_own() {
    let f = start("idle_timeout_seconds = 1").await;
    let mut holder = f.client().await;
    let (id, _events) = open(&mut holder).await;

    // A connection that says nothing at all is closed.
    let mut silent = tokio::net::UnixStream::connect(&f.socket)
        .await
        .expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while silent.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection is still open after 10 s"
    );

    // The session's connection stayed: its session is still known on it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("the session's connection is not idle");
}

#[tokio::test]
async fn a_client_closed_for_idleness_reconnects_on_its_next_call() {
    let f = start("idle_timeout_seconds = 1").await;
    let mut client = f.client().await;
    client.who_am_i(pb::WhoAmIRequest {}).await.expect("first");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("the channel opens a new connection");
}

#[tokio::test]
async fn a_failed_removal_leaves_the_mapping_and_says_so() {
    let f = start("").await;
    let mut client = f.client().await;
    let (id, _events) = open(&mut client).await;
    client
        .add_mapping(mapping(id, "10.244.1.8", 4369, 40000))
        .await
        .expect("added");
    f.fake.fail(true);
    let remove = pb::RemoveMappingRequest {
        session_id: id,
        pod_ip: "10.244.1.8".into(),
        pod_port: 4369,
    };
    let err = client
        .remove_mapping(remove.clone())
        .await
        .expect_err("backend down");
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("still in place"),
        "{}",
        err.message()
    );
    assert!(!err.message().contains("nothing was added"));
    let sessions = sessions(&mut client).await;
    assert_eq!(sessions[0].mappings.len(), 1, "still recorded");
    f.fake.fail(false);
    client.remove_mapping(remove).await.expect("removed");
    assert_eq!(f.fake.installed().expect("consistent").0.len(), 0);
}

#[tokio::test]
async fn aliases_follow_the_same_rules_as_mappings() {
    let f = start("aliases = true").await;
    let ip: IpAddr = "10.244.1.8".parse().unwrap();
    let mut client = f.client().await;
    let (id, events) = open(&mut client).await;
    let add = pb::AddAliasRequest {
        session_id: id,
        ip: ip.to_string(),
    };
    let release = pb::RemoveAliasRequest {
        session_id: id,
        ip: ip.to_string(),
    };

    // A failed addition adds nothing; a failed release keeps the hold.
    f.fake.fail(true);
    let err = client.add_alias(add.clone()).await.expect_err("down");
    assert!(
        err.message().contains("nothing was added"),
        "{}",
        err.message()
    );
    f.fake.fail(false);
    client.add_alias(add.clone()).await.expect("held");
    f.fake.fail(true);
    let err = client
        .remove_alias(release.clone())
        .await
        .expect_err("down");
    assert!(
        err.message().contains("still in place"),
        "{}",
        err.message()
    );
    f.fake.fail(false);
    assert_eq!(
        f.fake.installed().expect("consistent").1,
        [ip].into_iter().collect()
    );
    let err = client
        .add_alias(add.clone())
        .await
        .expect_err("held already");
    assert_eq!(err.code(), Code::AlreadyExists);

    // Another connection cannot release it.
    let mut other = f.client().await;
    let err = other
        .remove_alias(release.clone())
        .await
        .expect_err("not its session");
    assert_eq!(err.code(), Code::NotFound);

    // The session's end takes it off.
    drop(events);
    f.eventually("the alias's removal", |calls| {
        calls.contains(&Call::AliasRemove(ip))
    })
    .await;
    assert!(f.fake.installed().expect("consistent").1.is_empty());
}

#[tokio::test]
async fn a_helper_that_could_not_start_answers_every_call_with_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("helper.sock");
    let listener = server::bind(&socket, None, false).expect("bind");
    let status = crate::error::could_not_start(
        "its config /etc/erlbridge/helperd.toml is invalid: `max_rules_per_uid`: must be at least 1",
    );
    tokio::spawn(server::refuse_every_call(
        listener,
        status,
        std::future::pending(),
    ));
    for _ in 0..3 {
        let mut client = erlbridge_proto::connect(&socket).await.expect("connect");
        let err = client
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .expect_err("not started");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "the helper could not start: its config /etc/erlbridge/helperd.toml is invalid: \
             `max_rules_per_uid`: must be at least 1; fix it, then run: sudo systemctl restart \
             erlbridge-helperd"
        );
    }
}
