//! Whether this host routes a pod address, and what erlbridge does when it does not. In nat
//! mode connect() needs a route to the pod IP before the helper's redirect can act; a host
//! with no route to the pod network (an isolated CI runner, a split-tunnel VPN) gets the pod IP
//! as a loopback alias from the helper instead, when its policy allows aliases. Otherwise auto
//! mode takes the epmd mode, which needs no route, and nat mode stops with the fix.
//! [`decide`] is that one decision, for `up` and `doctor` alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

use ipnet::IpNet;

use crate::mode::{Mode, ModeChoice};

/// Whether the kernel has a route to `ip`. Connecting a UDP socket is the kernel's route
/// lookup; it sends nothing.
pub fn routed(ip: IpAddr) -> bool {
    let any: IpAddr = match ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    UdpSocket::bind((any, 0)).is_ok_and(|socket| socket.connect((ip, 9)).is_ok())
}

/// Whether `ip` is an address of this host (a loopback alias someone holds, say).
pub fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind((ip, 0)).is_ok()
}

/// Whether reaching `ip` in nat mode needs a loopback alias of this session's: the host has
/// no route to it, or has it only as another session's alias, which may go before this one.
pub fn needs_alias(ip: IpAddr) -> bool {
    !routed(ip) || is_local(ip)
}

/// What the helper can do, as far as routes go: `Ok(aliases allowed)`, or why it cannot be
/// used at all.
pub type HelperView<'a> = Result<bool, &'a str>;

/// The mode a run uses, and why when auto chose epmd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The mode.
    pub mode: Mode,
    /// Why auto mode took epmd.
    pub why: Option<String>,
}

/// Nat mode was asked for, pods have no route and the helper may not alias them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no route to {} on this host, so connections cannot reach erlbridge's redirect, and \
     erlbridge-helperd cannot put it on lo (its loopback aliases are off, or the address is \
     IPv6); add a route toward {}, or ask IT to set `aliases = true` in helperd.toml (for IPv4 \
     pods), or use --mode epmd",
    list(.ips),
    list(.networks)
)]
pub struct NoRoute {
    /// The pod addresses without a route.
    pub ips: Vec<IpAddr>,
    /// The networks to route: the helper's allowed networks holding them.
    pub networks: Vec<IpNet>,
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which way a run reaches pods at `unrouted` (the pod addresses this host does not route),
/// given `--mode` and what the helper can do. `allowed` are the helper's pod networks, to name
/// the route to add.
pub fn decide(
    choice: ModeChoice,
    helper: HelperView,
    unrouted: &[IpAddr],
    allowed: &[IpNet],
) -> Result<Decision, NoRoute> {
    let nat = Decision {
        mode: Mode::Nat,
        why: None,
    };
    match (choice, helper) {
        (ModeChoice::Epmd, _) => Ok(Decision {
            mode: Mode::Epmd,
            why: None,
        }),
        // The helper's own failure is the caller's to report.
        (ModeChoice::Nat, Err(_)) => Ok(nat),
        (ModeChoice::Auto, Err(why)) => Ok(Decision {
            mode: Mode::Epmd,
            why: Some(why.to_owned()),
        }),
        (_, Ok(_)) if unrouted.is_empty() => Ok(nat),
        (_, Ok(true)) if aliasable(unrouted) => Ok(nat),
        (ModeChoice::Auto, Ok(aliases)) => Ok(Decision {
            mode: Mode::Epmd,
            why: Some(format!(
                "no route to {} on this host, and erlbridge-helperd {}",
                list(unrouted),
                if aliases {
                    "puts IPv4 addresses only on lo"
                } else {
                    "may not add loopback aliases"
                }
            )),
        }),
        (ModeChoice::Nat, Ok(_)) => Err(no_route(unrouted, allowed)),
    }
}

/// Whether loopback aliases can make every address of `ips` connectable: the helper aliases
/// IPv4 addresses only.
pub fn aliasable(ips: &[IpAddr]) -> bool {
    ips.iter().all(IpAddr::is_ipv4)
}

/// The pod addresses among `ips` that need a loopback alias of this session's
/// ([`needs_alias`]).
pub fn unrouted(ips: &[IpAddr]) -> Vec<IpAddr> {
    ips.iter().copied().filter(|ip| needs_alias(*ip)).collect()
}

/// The refusal for pods at `ips` that have no route, naming the networks to route: the most
/// specific of the helper's `allowed` networks that holds each.
pub fn no_route(ips: &[IpAddr], allowed: &[IpNet]) -> NoRoute {
    let mut networks: Vec<IpNet> = ips
        .iter()
        .map(|ip| {
            allowed
                .iter()
                .filter(|net| net.contains(ip))
                .max_by_key(|net| net.prefix_len())
                .copied()
                .unwrap_or_else(|| IpNet::from(*ip))
        })
        .collect();
    networks.sort();
    networks.dedup();
    NoRoute {
        ips: ips.to_vec(),
        networks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_decisions() {
        let pods: IpNet = "10.244.0.0/16".parse().unwrap();
        let wide: IpNet = "10.0.0.0/8".parse().unwrap();
        let unrouted = [ip("10.244.1.8")];
        let v6 = [ip("fd00::8")];
        let epmd = |why: Option<&str>| {
            Ok(Decision {
                mode: Mode::Epmd,
                why: why.map(str::to_owned),
            })
        };
        let nat = Ok(Decision {
            mode: Mode::Nat,
            why: None,
        });
        for (name, choice, helper, unrouted, want) in [
            (
                "epmd asks nothing",
                ModeChoice::Epmd,
                Ok(false),
                &unrouted[..],
                epmd(None),
            ),
            (
                "auto with a routed pod",
                ModeChoice::Auto,
                Ok(false),
                &[][..],
                nat.clone(),
            ),
            (
                "auto with an alias",
                ModeChoice::Auto,
                Ok(true),
                &unrouted[..],
                nat.clone(),
            ),
            (
                "auto without the helper",
                ModeChoice::Auto,
                Err("it is not there"),
                &[][..],
                epmd(Some("it is not there")),
            ),
            (
                "auto, no route, no aliases",
                ModeChoice::Auto,
                Ok(false),
                &unrouted[..],
                epmd(Some(
                    "no route to 10.244.1.8 on this host, and erlbridge-helperd may not add \
                     loopback aliases",
                )),
            ),
            (
                "nat with an alias",
                ModeChoice::Nat,
                Ok(true),
                &unrouted[..],
                nat.clone(),
            ),
            (
                "auto with aliases but an IPv6 pod: the helper aliases IPv4 only",
                ModeChoice::Auto,
                Ok(true),
                &v6[..],
                epmd(Some(
                    "no route to fd00::8 on this host, and erlbridge-helperd puts IPv4 \
                     addresses only on lo",
                )),
            ),
            (
                "nat with aliases but an IPv6 pod",
                ModeChoice::Nat,
                Ok(true),
                &v6[..],
                Err(NoRoute {
                    ips: v6.to_vec(),
                    networks: vec!["fd00::8/128".parse().unwrap()],
                }),
            ),
            (
                "nat, helper failing",
                ModeChoice::Nat,
                Err("gone"),
                &unrouted[..],
                nat.clone(),
            ),
            (
                "nat, no route, no aliases",
                ModeChoice::Nat,
                Ok(false),
                &unrouted[..],
                Err(NoRoute {
                    ips: unrouted.to_vec(),
                    networks: vec![pods],
                }),
            ),
        ] {
            assert_eq!(
                decide(choice, helper, unrouted, &[wide, pods]),
                want,
                "{name}"
            );
        }
        let e = decide(ModeChoice::Nat, Ok(false), &unrouted, &[]).expect_err("no way");
        assert_eq!(
            e.to_string(),
            "no route to 10.244.1.8 on this host, so connections cannot reach erlbridge's \
             redirect, and erlbridge-helperd cannot put it on lo (its loopback aliases are off, \
             or the address is IPv6); add a route toward 10.244.1.8/32, or ask IT to set \
             `aliases = true` in helperd.toml (for IPv4 pods), or use --mode epmd"
        );
    }

    #[test]
    fn loopback_is_routed_and_local() {
        assert!(routed(ip("127.0.0.1")) && is_local(ip("127.0.0.1")));
        assert!(
            needs_alias(ip("127.0.0.1")),
            "a local address is someone's alias"
        );
    }
}
