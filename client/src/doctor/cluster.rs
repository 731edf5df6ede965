//! doctor's checks against the cluster: the API server, the rights erlbridge needs, and for a
//! TARGET every step `up` takes there (the watch's first list, readiness, each pod's epmd
//! through a port-forward), with nothing set up.

use std::net::IpAddr;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, ListParams, PostParams};

use super::{Check, failed, pass};
use crate::discover::{DiscoverError, NodeRules, Target, check_first, watch_config};
use crate::k8s::{ClusterOptions, Kube};
use crate::nodes;
use crate::output::chain;
use crate::watch::PodWatch;

/// What the cluster checks found: the checks, and the ready pods' IPs.
pub struct Found {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The IPs of the target's ready pods (empty without a target).
    pub pod_ips: Vec<IpAddr>,
}

const RIGHTS: [(&str, &str, &str); 4] = [
    ("get", "pods", ""),
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("create", "pods", "portforward"),
];

/// Connects, asks for the server's version and the rights, then walks `up`'s steps for
/// `target`.
pub async fn checks(cluster: &ClusterOptions, target: Option<&Target>, rules: &NodeRules) -> Found {
    let mut checks = Vec::new();
    let kube = match crate::k8s::connect(cluster).await {
        Ok(kube) => kube,
        Err(e) => {
            checks.push(failed(
                "kubernetes",
                chain(&e),
                "check --kubeconfig / --context (kubectl config get-contexts shows them)",
            ));
            return Found {
                checks,
                pod_ips: Vec::new(),
            };
        }
    };
    match kube.call(kube.client.apiserver_version()).await {
        Ok(v) => checks.push(pass(
            "kubernetes",
            format!(
                "API server {} at {} answers; namespace {}",
                v.git_version, kube.url, kube.namespace
            ),
        )),
        Err(e) => {
            checks.push(failed(
                "kubernetes",
                e.to_string(),
                "check that the API server in your kubeconfig is reachable (kubectl version); \
                 --request-timeout gives a slow one longer",
            ));
            return Found {
                checks,
                pod_ips: Vec::new(),
            };
        }
    }
    checks.push(rights(&kube).await);
    let pod_ips = match target {
        Some(target) => target_checks(&kube, target, rules, &mut checks).await,
        None => Vec::new(),
    };
    Found { checks, pod_ips }
}

/// May this user get, list and watch pods and open port-forwards? Asked with
/// SelfSubjectAccessReviews; where the API server will not answer those (some proxies do
/// not serve them), the operations themselves are tried.
async fn rights(kube: &Kube) -> Check {
    let namespace = &kube.namespace;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(kube.client.clone());
    let mut denied = Vec::new();
    let mut unasked = None;
    for (verb, resource, sub) in RIGHTS {
        let what = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
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
        match kube
            .call(reviews.create(&PostParams::default(), &review))
            .await
        {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => denied.push(what),
            Err(e) => {
                unasked = Some(e);
                break;
            }
        }
    }
    let fix = format!(
        "ask for a Role in {namespace} granting get, list, watch on pods and create on \
         pods/portforward"
    );
    if let Some(e) = unasked {
        // It could not ask, so it must not say "not allowed": try what it can try.
        let listed = kube
            .call(kube.pods().list(&ListParams::default().limit(1)))
            .await;
        return match listed {
            Ok(_) => pass(
                "rbac",
                format!(
                    "could not ask which rights you have ({e}); listing pods in {namespace} \
                     works, and the target's checks try port-forwarding"
                ),
            ),
            Err(list) if list.is_forbidden() => failed(
                "rbac",
                format!(
                    "could not ask which rights you have ({e}); listing pods in {namespace} is refused: {list}"
                ),
                fix,
            ),
            Err(list) => failed(
                "rbac",
                format!("could not ask which rights you have ({e}), nor list pods: {list}"),
                "check that the API server answers (kubectl get pods)",
            ),
        };
    }
    if denied.is_empty() {
        pass(
            "rbac",
            format!("may get, list, watch pods and create pods/portforward in {namespace}"),
        )
    } else {
        failed(
            "rbac",
            format!(
                "not allowed in namespace {namespace}: {}",
                denied.join(", ")
            ),
            fix,
        )
    }
}

/// `up`'s steps for `target`, up to asking each ready pod's epmd; returns their IPs.
async fn target_checks(
    kube: &Kube,
    target: &Target,
    rules: &NodeRules,
    checks: &mut Vec<Check>,
) -> Vec<IpAddr> {
    let namespace = &kube.namespace;
    let what = format!("{target} in namespace {namespace}");
    let first = async {
        let config = watch_config(kube, target).await?;
        let watch = PodWatch::start(kube, config, rules.clone(), what.clone()).await?;
        let snapshot = watch.snapshot();
        let skipped = check_first(target, namespace, &snapshot)?;
        Ok::<_, DiscoverError>((snapshot, skipped))
    };
    let (snapshot, skipped) = match first.await {
        Ok(found) => found,
        Err(e) => {
            let fix = match &e {
                DiscoverError::NotFound(_) => {
                    format!("check the name and the namespace (kubectl get pods -n {namespace})")
                }
                DiscoverError::NotReady(_) => {
                    "wait until it is Ready (kubectl get pods), or give `erlbridge up` a \
                     --ready-timeout to wait for it"
                        .to_owned()
                }
                DiscoverError::Forbidden(_) => format!(
                    "ask for a Role in {namespace} granting get, list, watch on pods and create \
                     on pods/portforward"
                ),
                DiscoverError::Selector(_) => "name the pods with -l SELECTOR".to_owned(),
                DiscoverError::Api(_) => "check that the API server answers".to_owned(),
            };
            checks.push(failed("target", chain(&e), fix));
            return Vec::new();
        }
    };
    let ready: Vec<_> = snapshot.into_values().filter_map(Result::ok).collect();
    let mut detail = format!(
        "{what}: {} pod{} ready",
        ready.len(),
        if ready.len() == 1 { "" } else { "s" }
    );
    if !skipped.is_empty() {
        detail.push_str(&format!(" ({}; bridged when Ready)", skipped.join("; ")));
    }
    checks.push(pass("target", detail));
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for pod in &ready {
        match nodes::find(kube, pod).await {
            Ok((names, how)) => {
                let names: Vec<String> = names
                    .iter()
                    .map(|n| format!("{}@{} on port {}", n.name, pod.host, n.port))
                    .collect();
                let how = match how {
                    nodes::Found::Epmd => String::new(),
                    nodes::Found::Spec(from) => format!(" (no epmd: {from})"),
                };
                found.push(format!("{}: {}{how}", pod.name, names.join(", ")));
            }
            Err(e) => failures.push(chain(&e)),
        }
    }
    if failures.is_empty() {
        checks.push(pass("epmd", found.join("; ")));
    } else {
        checks.push(failed(
            "epmd",
            failures.join("; "),
            "check that the pod's Erlang node runs and registered with epmd (epmd -names in the \
             pod); a port other than 4369 goes in a container port named epmd",
        ));
    }
    ready.iter().map(|p| p.ip).collect()
}
