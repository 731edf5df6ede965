//! IT checks erlbridge-helperd with its own tools through the documented API
//! (proto/erlbridge/helper/v1/helper.proto): a current Python grpcio client from the package
//! registry, run as a user of the helper, gets WhoAmI and ListSessions answers. Current gRPC
//! C-core clients send a Unix socket's path as `:authority`, which the helper's HTTP/2 layer
//! refuses as malformed: the README and helperd.toml give each client its option, and this
//! test runs both, the refusal first. Needs root (the helper, namespaces) and the registry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use erlbridge_testbed::{Bins, Helperd, User, Workstation, python, require_root};
use serde_json::Value;

/// The client: WhoAmI then ListSessions on `unix:SOCKET`, with `grpc.default_authority` set
/// to AUTHORITY when given; prints one JSON object.
const CLIENT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
from erlbridge.helper.v1 import helper_pb2 as pb, helper_pb2_grpc as rpc

socket, authority = sys.argv[2], sys.argv[3:]
options = [("grpc.default_authority", authority[0])] if authority else []
stub = rpc.HelperStub(grpc.insecure_channel("unix:" + socket, options=options))
try:
    who = stub.WhoAmI(pb.WhoAmIRequest(), timeout=10)
    listed = stub.ListSessions(pb.ListSessionsRequest(), timeout=10)
    print(json.dumps({
        "uid": who.caller.uid, "allowed": who.allowed, "api_version": who.api_version,
        "group": who.policy.group,
        "sessions": [{"label": s.label, "uid": s.uid,
                      "mappings": ["%s:%d" % (m.pod_ip, m.pod_port) for m in s.mappings]}
                     for s in listed.sessions]}))
except grpc.RpcError as e:
    print(json.dumps({"code": str(e.code()), "details": e.details()}))
"#;

/// Runs the client as `user` in `ws`; its JSON answer.
fn ask(
    ws: &Workstation,
    user: &User,
    python: &Path,
    dir: &Path,
    socket: &Path,
    authority: Option<&str>,
) -> Value {
    let script = dir.join("client.py").display().to_string();
    let (stubs, socket) = (dir.display().to_string(), socket.display().to_string());
    let python = python.display().to_string();
    let mut argv = vec![
        python.as_str(),
        script.as_str(),
        stubs.as_str(),
        socket.as_str(),
    ];
    argv.extend(authority);
    let (code, out, err) = ws.run_as(user, &argv).expect("python");
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

#[test]
fn a_current_python_grpcio_client_gets_whoami_and_the_sessions() {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"]).expect("binaries");
    let ws = Workstation::new().expect("workstation");
    let helperd = Helperd::start(&ws, &bins, "").expect("helperd");
    let user = User::member(61170);

    let python = python::grpcio().expect("grpcio from the package registry");
    let dir: PathBuf = ws.scratch().join("grpc-client");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    python::helper_stubs(&python, &proto, &dir).expect("stubs");
    std::fs::write(dir.join("client.py"), CLIENT).expect("client");

    // A session of the user's with one mapping, as erlbridge holds it.
    let socket = helperd.socket.display().to_string();
    let argv = [
        bins.path("helper-probe"),
        "--socket".into(),
        socket,
        "hold".into(),
        "--map".into(),
        "10.244.1.8:4369=40000".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut holder = ws.spawn_as(&user, &argv).expect("probe");
    holder
        .wait_line(Duration::from_secs(10), |l| l.contains("ready"))
        .expect("the session holds its mapping");

    // As grpcio comes: the socket's path as :authority, which the HTTP/2 layer resets with
    // PROTOCOL_ERROR (error code 1).
    let refused = ask(&ws, &user, &python, &dir, &helperd.socket, None);
    assert_eq!(refused["code"], "StatusCode.INTERNAL", "{refused}");
    let details = refused["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("RST_STREAM") && details.contains("error code 1"),
        "{refused}"
    );

    // With the option the README gives it.
    let answer = ask(
        &ws,
        &user,
        &python,
        &dir,
        &helperd.socket,
        Some("localhost"),
    );
    assert_eq!(answer["uid"], user.uid, "{answer}");
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer["api_version"], 1, "{answer}");
    let sessions = answer["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{answer}");
    assert_eq!(sessions[0]["label"], "helper-probe");
    assert_eq!(sessions[0]["uid"], user.uid);
    assert_eq!(
        sessions[0]["mappings"],
        serde_json::json!(["10.244.1.8:4369"])
    );
}
