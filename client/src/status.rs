//! The `status` subcommand: the helper's version, who it thinks you are, the policy it applies,
//! and your live sessions with their mappings (every session, for root).

use std::path::PathBuf;

use serde_json::json;

use crate::cli::exit;
use crate::helper::{self, HelperError};
use crate::output::Output;
use crate::up::{fail, say};

/// Runs `erlbridge status`; returns the exit code (0, or 7 when the helper is unreachable).
pub async fn run(socket: PathBuf, output: Output) -> u8 {
    let (who, sessions) =
        match tokio::try_join!(helper::who_am_i(&socket), helper::sessions(&socket)) {
            Ok(answers) => answers,
            Err(e) => {
                let code = match e {
                    HelperError::Refused { .. } => exit::HELPER_REFUSED,
                    _ => exit::HELPER_UNREACHABLE,
                };
                return fail(output, code, "helper_unreachable", &e.to_string());
            }
        };
    let caller = who.caller.clone().unwrap_or_default();
    let policy = who.policy.clone().unwrap_or_default();
    match output {
        Output::Json => say(
            &json!({
                "event": "status",
                "helper": {"version": who.helper_version, "api_version": who.api_version, "socket": socket.display().to_string(), "nft": who.nft_version},
                "caller": {"uid": caller.uid, "gid": caller.gid, "groups": caller.groups, "allowed": who.allowed, "refusal": who.refusal},
                "policy": {"group": policy.group, "allowed_uids": policy.allowed_uids, "allowed_cidrs": policy.allowed_cidrs,
                           "max_rules_per_uid": policy.max_rules_per_uid, "max_sessions_per_uid": policy.max_sessions_per_uid,
                           "aliases": policy.aliases},
                "sessions": sessions.iter().map(|s| json!({
                    "session": s.session_id, "uid": s.uid, "pid": s.pid, "label": s.label,
                    "opened_unix_seconds": s.opened_unix_seconds,
                    "mappings": s.mappings.iter().map(|m| json!({
                        "pod_ip": m.pod_ip, "pod_port": m.pod_port, "local_ip": m.local_ip, "local_port": m.local_port, "uid": m.uid,
                    })).collect::<Vec<_>>(),
                    "aliases": s.aliases,
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        ),
        Output::Text => {
            let mut text = format!(
                "erlbridge-helperd {} (API {}) at {}; {}\n",
                who.helper_version,
                who.api_version,
                socket.display(),
                if who.nft_version.is_empty() { "nft: not found".to_owned() } else { who.nft_version.clone() }
            );
            let groups: Vec<String> = caller.groups.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                "you: uid {} gid {} groups [{}]: {}\n",
                caller.uid,
                caller.gid,
                groups.join(","),
                if who.allowed { "allowed".to_owned() } else { format!("not allowed: {}", who.refusal) }
            ));
            text.push_str(&format!(
                "policy: group {}; pod networks {}; per uid at most {} mappings and {} sessions; aliases {}\n",
                policy.group,
                policy.allowed_cidrs.join(", "),
                policy.max_rules_per_uid,
                policy.max_sessions_per_uid,
                if policy.aliases { "on" } else { "off" }
            ));
            if sessions.is_empty() {
                text.push_str("no live sessions\n");
            }
            for s in &sessions {
                text.push_str(&format!("session {} of uid {} (pid {}): {:?}\n", s.session_id, s.uid, s.pid, s.label));
                for m in &s.mappings {
                    text.push_str(&format!("  {}:{} -> {}:{}\n", m.pod_ip, m.pod_port, m.local_ip, m.local_port));
                }
                for a in &s.aliases {
                    text.push_str(&format!("  alias {a} on lo\n"));
                }
            }
            print!("{text}");
        }
    }
    exit::OK
}
