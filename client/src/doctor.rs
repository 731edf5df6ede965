//! The `doctor` subcommand: checks everything `erlbridge up` needs and, for each problem, says
//! how to fix it. With a TARGET it walks `up`'s own steps ([`cluster`]) up to asking each
//! pod's epmd and the helper's policy for each pod IP, and takes the mode and route decision
//! `up` takes ([`route::decide`]), so it fails exactly where `up` would. Nothing is set up.
//! Exit code 0 only when every check passes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::discover::{NodeRules, Target};
use crate::helper::{self, HelperError};
use crate::k8s::ClusterOptions;
use crate::mode::{Mode, ModeChoice};
use crate::output::{self, Event, Output, say};
use crate::route;

mod cluster;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`mode`, `helper`, `allowed`, `nftables`, `kubernetes`, `rbac`, `target`,
    /// `epmd`, `policy`, `route`, `erlang`).
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    pub fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn failed(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// The access group's gid, from the policy's `group` ("erlbridge" or "gid 61000").
fn group_gid(group: &str) -> Option<u32> {
    match group.strip_prefix("gid ") {
        Some(n) => n.parse().ok(),
        None => nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    }
}

/// The helper's checks, and its policy when it answered.
async fn helper_checks(socket: &Path) -> (Vec<Check>, Option<erlbridge_proto::v1::Policy>) {
    let who = match helper::who_am_i(socket).await {
        Ok(who) => who,
        Err(e) => {
            let fix = match &e {
                HelperError::NoAccess { group, stale, .. } => helper::access_advice(group, *stale),
                HelperError::NotStarted { .. } => {
                    "fix what it names, then: sudo systemctl restart erlbridge-helperd".to_owned()
                }
                _ => "install erlbridge and start its helper: sudo systemctl enable --now \
                      erlbridge-helperd.socket (or point --helper-socket at it)"
                    .to_owned(),
            };
            let unknown = "cannot tell while the helper is unreachable";
            return (
                vec![
                    failed("helper", e.to_string(), fix),
                    failed("allowed", unknown, "fix the helper check first"),
                    failed("nftables", unknown, "fix the helper check first"),
                ],
                None,
            );
        }
    };
    let mut checks = Vec::new();
    if who.api_version == erlbridge_proto::API_VERSION {
        checks.push(pass(
            "helper",
            format!(
                "erlbridge-helperd {} (API {}) at {}",
                who.helper_version,
                who.api_version,
                socket.display()
            ),
        ));
    } else {
        checks.push(failed(
            "helper",
            format!(
                "the helper speaks API {}, this erlbridge speaks {}",
                who.api_version,
                erlbridge_proto::API_VERSION
            ),
            "install the same erlbridge version for the helper and the client",
        ));
    }
    let policy = who.policy.clone().unwrap_or_default();
    let caller = who.caller.clone().unwrap_or_default();
    if who.allowed {
        checks.push(pass(
            "allowed",
            format!("uid {} may use the helper", caller.uid),
        ));
    } else {
        let group = policy.group.strip_prefix("gid ").unwrap_or(&policy.group);
        let stale =
            group_gid(&policy.group).is_some_and(|gid| helper::in_group_database(caller.uid, gid));
        let fix = helper::access_advice(group, stale);
        checks.push(failed("allowed", who.refusal.clone(), fix));
    }
    if who.nft_version.is_empty() {
        checks.push(failed(
            "nftables",
            "the helper could not run nft",
            "ask your administrator to install nftables (apt install nftables)",
        ));
    } else {
        checks.push(pass("nftables", who.nft_version.clone()));
    }
    (checks, Some(policy))
}

/// The pod addresses to judge routes by: the target's pods, or without a target the first
/// address of the first pod network the helper allows.
fn route_probes(pod_ips: &[IpAddr], allowed: &[IpNet]) -> Vec<IpAddr> {
    if !pod_ips.is_empty() {
        return pod_ips.to_vec();
    }
    allowed
        .iter()
        .find_map(|net| match net {
            IpNet::V4(v4) => Some(IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) | 1))),
            IpNet::V6(_) => None,
        })
        .into_iter()
        .collect()
}

/// The route toward each pod address and what `up` does about it in nat mode.
fn route_check(probes: &[IpAddr], aliases: bool) -> Check {
    if probes.is_empty() {
        return pass(
            "route",
            "no pod address to check: name a TARGET to check its pods'",
        );
    }
    let said: Vec<String> = probes
        .iter()
        .map(|ip| {
            let aliased = aliases && route::aliasable(&[*ip]);
            match (route::needs_alias(*ip), aliased) {
                (false, _) => format!("{ip}: routed"),
                (true, true) => {
                    format!("{ip}: no route; up puts it on lo for the bridge (a loopback alias)")
                }
                (true, false) => format!("{ip}: no route"),
            }
        })
        .collect();
    pass("route", said.join("; "))
}

fn erlang_check() -> Check {
    let find = crate::local::find_on_path;
    match (find("erl"), find("iex")) {
        (None, None) => failed(
            "erlang",
            "neither erl nor iex is on PATH",
            "install Erlang (apt install erlang-base) or Elixir",
        ),
        (erl, iex) => pass(
            "erlang",
            format!(
                "erl: {}, iex: {}",
                erl.map_or("missing".to_owned(), |p| p.display().to_string()),
                iex.map_or("missing".to_owned(), |p| p.display().to_string())
            ),
        ),
    }
}

/// Whether the helper's policy takes each pod address (a dry run of its network check).
fn policy_check(pod_ips: &[IpAddr], allowed: &[IpNet]) -> Option<Check> {
    if pod_ips.is_empty() {
        return None;
    }
    let refused: Vec<String> = pod_ips
        .iter()
        .filter(|ip| !allowed.iter().any(|net| net.contains(*ip)))
        .map(ToString::to_string)
        .collect();
    let networks = allowed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(if refused.is_empty() {
        pass(
            "policy",
            format!("the helper's allowed_cidrs ({networks}) hold every pod IP"),
        )
    } else {
        failed(
            "policy",
            format!(
                "the helper's policy refuses pod IP {}: it is outside allowed_cidrs ({networks})",
                refused.join(", ")
            ),
            "ask your administrator to add the pod network to allowed_cidrs in helperd.toml, or \
             use --mode epmd",
        )
    })
}

/// What `doctor` is asked to check.
#[derive(Debug, Clone)]
pub struct Request {
    /// The helper's socket.
    pub socket: PathBuf,
    /// Where the cluster is.
    pub cluster: ClusterOptions,
    /// A target whose pods to check, as `up` would bridge them.
    pub target: Option<Target>,
    /// `--node-host`, `--dist-port`, `--node-name`, as `up` takes them.
    pub rules: NodeRules,
    /// `--mode`, as `up` takes it.
    pub mode: ModeChoice,
}

/// Runs every check that applies to the mode `erlbridge up` would use, which the same
/// decision as `up`'s picks ([`route::decide`]).
pub async fn checks(request: &Request) -> Vec<Check> {
    let choice = request.mode;
    let ((helper, policy), found) = tokio::join!(
        helper_checks(&request.socket),
        cluster::checks(&request.cluster, request.target.as_ref(), &request.rules)
    );
    let (kube, pod_ips) = (found.checks, found.pod_ips);
    // What `up` learns by opening a session: the helper answers and lets this user in.
    let refusal = helper
        .iter()
        .find(|c| !c.ok && matches!(c.name, "helper" | "allowed"))
        .map(|c| c.detail.clone());
    let allowed: Vec<IpNet> = policy
        .as_ref()
        .map(helper::allowed_networks)
        .unwrap_or_default();
    let aliases = policy.as_ref().is_some_and(|p| p.aliases);
    let probes = route_probes(&pod_ips, &allowed);
    let unrouted = route::unrouted(&probes);
    let view = match &refusal {
        Some(why) => Err(why.as_str()),
        None => Ok(aliases),
    };
    let decision = route::decide(choice, view, &unrouted, &allowed);
    let epmd = "local nodes must be started with erlbridge's epmd module (erlbridge up prints \
                the flags and sets them for -- CMD and remsh)";
    let (mode, mode_check) = match (&decision, choice) {
        (Err(_), _) | (Ok(_), ModeChoice::Nat) => (
            Mode::Nat,
            pass("mode", "nat (--mode nat): through erlbridge-helperd"),
        ),
        (Ok(d), ModeChoice::Epmd) => (d.mode, pass("mode", format!("epmd (--mode epmd): {epmd}"))),
        (Ok(d), ModeChoice::Auto) => match &d.why {
            None => (
                d.mode,
                pass(
                    "mode",
                    "nat: erlbridge-helperd answers and lets you in, so any local node reaches the pods",
                ),
            ),
            Some(why) => (d.mode, pass("mode", format!("epmd, because {why}: {epmd}"))),
        },
    };
    let mut checks = vec![mode_check];
    // The epmd mode needs neither the helper nor a route to the pod network.
    if mode == Mode::Nat {
        checks.extend(helper);
    }
    checks.extend(kube);
    if mode == Mode::Nat
        && let Some(policy) = policy_check(&pod_ips, &allowed)
    {
        checks.push(policy);
    }
    match decision {
        Err(no_route) => checks.push(failed(
            "route",
            format!(
                "no route to {}",
                no_route
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            no_route.to_string(),
        )),
        Ok(_) if mode == Mode::Nat => checks.push(route_check(&probes, aliases)),
        Ok(_) => {}
    }
    checks.push(erlang_check());
    checks
}

/// Runs `erlbridge doctor`; returns 0 only when every check passed.
pub async fn run(request: Request, output: Output) -> u8 {
    let checks = checks(&request).await;
    for c in &checks {
        match output {
            Output::Json => output::emit(&Event::Check {
                check: c.name.to_owned(),
                ok: c.ok,
                detail: c.detail.clone(),
                fix: c.fix.clone(),
            }),
            Output::Text => {
                say(&format!(
                    "{} {:<10} {}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name,
                    c.detail
                ));
                if let Some(fix) = &c.fix {
                    say(&format!("     {:<10} fix: {fix}", ""));
                }
            }
        }
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    match output {
        Output::Json => output::emit(&Event::Summary {
            ok: failed.is_empty(),
            failed: failed.iter().map(|f| (*f).to_owned()).collect(),
        }),
        Output::Text if failed.is_empty() => say("all checks passed"),
        Output::Text => say(&format!(
            "{} check(s) failed: {}",
            failed.len(),
            failed.join(", ")
        )),
    }
    u8::from(!failed.is_empty())
}
