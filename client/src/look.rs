//! What `observer` and `top` share: the bridge up as `remsh` brings it, the one node of the
//! target they look at (`--pod`, else the first ready pod), and the hidden local node that
//! looks ([`crate::local`]), its start said in JSON mode with the ready event.

use crate::bridge::{Bridge, BridgedNode, Ready};
use crate::cli::{BridgeArgs, exit};
use crate::discover::Target;
use crate::local::{LocalNode, require_erl};
use crate::output::{self, Failure, Output};
use crate::up::{Up, bring_up, ready_event};

/// A bridge up, the node to look at (and how it was chosen, in words), and the local node.
pub struct Looking {
    /// The bridge.
    pub bridge: Bridge,
    /// What it bridged.
    pub ready: Ready,
    /// The node looked at.
    pub node: BridgedNode,
    /// How it was chosen: `pod app-0, the first ready pod of statefulset/app; ...`.
    pub how: String,
    /// The hidden local node that looks, named after `prefix`.
    pub local: LocalNode,
}

/// Brings the bridge up and picks the node (`pod`, else the first) for a local node named
/// after `prefix`.
pub async fn one_node(
    args: &BridgeArgs,
    pod: Option<&str>,
    prefix: &str,
) -> Result<Looking, Failure> {
    require_erl()?;
    let Up {
        mut bridge, cookie, ..
    } = bring_up(args).await?;
    let ready = bridge.ready();
    let (node, how) = pick(&ready, pod, &args.target())?;
    let local = LocalNode::new(&mut bridge, args, cookie.as_deref(), prefix)?;
    if args.output == Output::Json {
        output::emit(&ready_event(&ready));
    }
    Ok(Looking {
        bridge,
        ready,
        node,
        how,
        local,
    })
}

/// The node a command that looks at one node looks at: the node of `--pod` when given, else
/// the first bridged one (pods by name); and how it was chosen, in words.
fn pick(
    ready: &Ready,
    pod: Option<&str>,
    target: &Target,
) -> Result<(BridgedNode, String), Failure> {
    let single = matches!(target, Target::Pod(_));
    match pod {
        Some(wanted) => match ready.nodes.iter().find(|n| n.pod == wanted) {
            Some(node) => Ok((node.clone(), format!("pod {wanted}"))),
            None => {
                let known: Vec<&str> = ready.nodes.iter().map(|n| n.pod.as_str()).collect();
                Err(Failure::new(
                    exit::NOT_FOUND,
                    "node_not_found",
                    format!(
                        "--pod {wanted} is not among the bridged pods of {target}: {}",
                        known.join(", ")
                    ),
                ))
            }
        },
        None => {
            let first = ready.nodes.first().cloned().ok_or_else(|| {
                Failure::new(
                    exit::NOT_READY,
                    "no_node",
                    format!("{target} has no node bridged"),
                )
            })?;
            let how = if single {
                format!("pod {}", first.pod)
            } else {
                format!(
                    "pod {}, the first ready pod of {target}; --pod NAME takes another",
                    first.pod
                )
            };
            Ok((first, how))
        }
    }
}
