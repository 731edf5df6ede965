//! The `doctor` subcommand: checks everything `erlbridge up` needs and, for each problem, says
//! how to fix it. Exit code 0 only when every check passes.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::discover::{Target, watch_config};
use crate::helper::{self, HelperError};
use crate::k8s::ClusterOptions;
use crate::output::{self, Event, Output, chain, say};
use crate::reach::{Mode, ModeChoice};
use crate::route;
use crate::watch::PodWatch;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`mode`, `helper`, `allowed`, `nftables`, `kubernetes`, `rbac`, `route`,
    /// `erlang`).
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

/// Whether the group database lists `uid`'s user in `gid` (though this process may not have it).
fn in_group_database(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// The helper's checks, and its policy when it answered.
async fn helper_checks(socket: &Path) -> (Vec<Check>, Option<erlbridge_proto::v1::Policy>) {
    let who = match helper::who_am_i(socket).await {
        Ok(who) => who,
        Err(e) => {
            let fix = match &e {
                HelperError::NoAccess { .. } => {
                    "ask your administrator to add you to group erlbridge (usermod -aG erlbridge <your user>), then log in again"
                }
                _ => {
                    "install erlbridge and start its helper: sudo systemctl enable --now erlbridge-helperd.socket (or point --helper-socket at it)"
                }
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
        let stale = group_gid(&policy.group).is_some_and(|gid| in_group_database(caller.uid, gid));
        let fix = if stale {
            format!(
                "you were added to group {} but this login session started before that: log out and in again (or run `newgrp {}`)",
                policy.group, policy.group
            )
        } else {
            format!(
                "ask your administrator to run `usermod -aG {} <your user>`, then log in again",
                policy.group
            )
        };
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

async fn kubernetes_checks(
    cluster: &ClusterOptions,
    target: Option<&Target>,
) -> (Vec<Check>, Vec<IpAddr>) {
    let (client, namespace) = match crate::k8s::connect(cluster).await {
        Ok(c) => c,
        Err(e) => {
            return (
                vec![
                    failed(
                        "kubernetes",
                        chain(&e),
                        "check --kubeconfig / --context (kubectl config get-contexts shows them)",
                    ),
                    failed(
                        "rbac",
                        "cannot tell without a usable kubeconfig",
                        "fix the kubernetes check first",
                    ),
                ],
                Vec::new(),
            );
        }
    };
    let mut checks = Vec::new();
    match client.apiserver_version().await {
        Ok(v) => checks.push(pass(
            "kubernetes",
            format!(
                "API server {} reachable; namespace {namespace}",
                v.git_version
            ),
        )),
        Err(e) => {
            checks.push(failed(
                "kubernetes",
                chain(&e),
                "check that the API server in your kubeconfig is reachable (kubectl version)",
            ));
            checks.push(failed(
                "rbac",
                "cannot tell without the API server",
                "fix the kubernetes check first",
            ));
            return (checks, Vec::new());
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for (verb, resource, sub) in [
        ("get", "pods", ""),
        ("list", "pods", ""),
        ("watch", "pods", ""),
        ("create", "pods", "portforward"),
    ] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    verb: Some(verb.to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource: (!sub.is_empty()).then(|| sub.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let what = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => denied.push(what),
            Err(e) => denied.push(format!("{what} (could not ask: {e})")),
        }
    }
    if denied.is_empty() {
        checks.push(pass(
            "rbac",
            format!("may get/list/watch pods and create pods/portforward in {namespace}"),
        ));
    } else {
        checks.push(failed(
            "rbac",
            format!("not allowed in namespace {namespace}: {}", denied.join(", ")),
            format!("ask for a Role in {namespace} granting get, list, watch on pods and create on pods/portforward"),
        ));
    }
    let ips = match target {
        Some(target) => pod_ips(&client, &namespace, target)
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    (checks, ips)
}

/// The IPs of the target's ready pods.
async fn pod_ips(
    client: &kube::Client,
    namespace: &str,
    target: &Target,
) -> Result<Vec<IpAddr>, crate::discover::DiscoverError> {
    let config = watch_config(client, namespace, target).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let watch = PodWatch::start(pods, config, None, target.to_string()).await?;
    Ok(watch
        .snapshot()
        .into_values()
        .filter_map(|seen| seen.ok().map(|p| p.ip))
        .collect())
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
    let said: Vec<String> = probes
        .iter()
        .map(|ip| match (route::needs_alias(*ip), aliases) {
            (false, _) => format!("{ip}: routed"),
            (true, true) => {
                format!("{ip}: no route; up puts it on lo for the bridge (a loopback alias)")
            }
            (true, false) => format!("{ip}: no route"),
        })
        .collect();
    pass("route", said.join("; "))
}

fn erlang_check() -> Check {
    let find = crate::remsh::find_on_path;
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

/// Runs every check that applies to the mode `erlbridge up` would use, which the same
/// decision as `up`'s picks ([`route::decide`]).
pub async fn checks(
    socket: &Path,
    cluster: &ClusterOptions,
    target: Option<&Target>,
    choice: ModeChoice,
) -> Vec<Check> {
    let ((helper, policy), (kube, pod_ips)) =
        tokio::join!(helper_checks(socket), kubernetes_checks(cluster, target));
    let refusal = helper.iter().find(|c| !c.ok).map(|c| c.detail.clone());
    let allowed: Vec<IpNet> = policy
        .iter()
        .flat_map(|p| p.allowed_cidrs.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    let aliases = policy.as_ref().is_some_and(|p| p.aliases);
    let probes = route_probes(&pod_ips, &allowed);
    let unrouted: Vec<IpAddr> = probes
        .iter()
        .copied()
        .filter(|ip| route::needs_alias(*ip))
        .collect();
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
pub async fn run(
    socket: PathBuf,
    cluster: ClusterOptions,
    target: Option<Target>,
    choice: ModeChoice,
    output: Output,
) -> u8 {
    let checks = checks(&socket, &cluster, target.as_ref(), choice).await;
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
