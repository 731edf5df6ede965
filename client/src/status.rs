//! The `status` subcommand: the helper's version, who it thinks you are, the policy it applies,
//! and your live sessions with their mappings (every session, for root).

use std::path::PathBuf;

use crate::cli::exit;
use crate::helper::{self, HelperError};
use crate::output::{
    self, CallerInfo, Event, Failure, HelperInfo, MappingReport, Output, PolicyInfo, SessionReport,
    StatusReport, say,
};

/// Runs `erlbridge status`; returns the exit code (0, or 7 when the helper is unreachable).
pub async fn run(socket: PathBuf, output: Output) -> Result<u8, Failure> {
    let (who, sessions) = tokio::try_join!(helper::who_am_i(&socket), helper::sessions(&socket))
        .map_err(|e| {
            let code = match e {
                HelperError::Refused { .. } => exit::HELPER_REFUSED,
                _ => exit::HELPER_UNREACHABLE,
            };
            Failure::of(code, "helper_unreachable", &e)
        })?;
    let caller = who.caller.clone().unwrap_or_default();
    let policy = who.policy.clone().unwrap_or_default();
    match output {
        Output::Json => output::emit(&Event::Status(Box::new(StatusReport {
            helper: HelperInfo {
                version: who.helper_version.clone(),
                api_version: who.api_version,
                socket: socket.display().to_string(),
                nft: who.nft_version.clone(),
            },
            caller: CallerInfo {
                uid: caller.uid,
                gid: caller.gid,
                groups: caller.groups.clone(),
                allowed: who.allowed,
                refusal: who.refusal.clone(),
            },
            policy: PolicyInfo {
                group: policy.group.clone(),
                allowed_uids: policy.allowed_uids.clone(),
                allowed_cidrs: policy.allowed_cidrs.clone(),
                max_rules_per_uid: policy.max_rules_per_uid,
                max_sessions_per_uid: policy.max_sessions_per_uid,
                aliases: policy.aliases,
            },
            sessions: sessions
                .iter()
                .map(|s| SessionReport {
                    session: s.session_id,
                    uid: s.uid,
                    pid: s.pid,
                    label: s.label.clone(),
                    opened_unix_seconds: s.opened_unix_seconds,
                    mappings: s
                        .mappings
                        .iter()
                        .map(|m| MappingReport {
                            pod_ip: m.pod_ip.clone(),
                            pod_port: m.pod_port,
                            local_ip: m.local_ip.clone(),
                            local_port: m.local_port,
                            uid: m.uid,
                        })
                        .collect(),
                    aliases: s.aliases.clone(),
                })
                .collect(),
        }))),
        Output::Text => {
            let mut text = format!(
                "erlbridge-helperd {} (API {}) at {}; {}\n",
                who.helper_version,
                who.api_version,
                socket.display(),
                if who.nft_version.is_empty() {
                    "nft: not found".to_owned()
                } else {
                    who.nft_version.clone()
                }
            );
            let groups: Vec<String> = caller.groups.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                "you: uid {} gid {} groups [{}]: {}\n",
                caller.uid,
                caller.gid,
                groups.join(","),
                if who.allowed {
                    "allowed".to_owned()
                } else {
                    format!("not allowed: {}", who.refusal)
                }
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
                text.push_str(&format!(
                    "session {} of uid {} (pid {}): \"{}\"\n",
                    s.session_id, s.uid, s.pid, s.label
                ));
                for m in &s.mappings {
                    text.push_str(&format!(
                        "  {}:{} -> {}:{}\n",
                        m.pod_ip, m.pod_port, m.local_ip, m.local_port
                    ));
                }
                for a in &s.aliases {
                    text.push_str(&format!("  alias {a} on lo\n"));
                }
            }
            say(text.trim_end());
        }
    }
    Ok(exit::OK)
}
