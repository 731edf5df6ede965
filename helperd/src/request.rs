//! The one boundary where proto messages become validated domain values. Nothing past this
//! module reads a proto request type: policy, session and backends see only what is here.

use std::net::IpAddr;

use erlbridge_proto::v1 as pb;

/// The longest address text accepted; the longest real one (`ffff:...:255.255.255.255`) is 45.
const MAX_ADDR_LEN: usize = 64;
/// The longest session label accepted.
const MAX_LABEL_LEN: usize = 128;

/// A session, by the id OpenSession gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A request field that is malformed on its face, before any policy is consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The proto field.
    pub field: &'static str,
    /// What is wrong with it and what would be right.
    pub problem: String,
}

/// OpenSession, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    /// A printable label of at most 128 characters.
    pub label: String,
}

/// AddMapping, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddMapping {
    /// The caller's session.
    pub session: SessionId,
    /// The pod address the caller dials.
    pub pod_ip: IpAddr,
    /// The pod port the caller dials.
    pub pod_port: u16,
    /// The requested target address; `None` means the loopback of `pod_ip`'s family.
    pub local_ip: Option<IpAddr>,
    /// The caller's listener port.
    pub local_port: u16,
}

/// RemoveMapping, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoveMapping {
    /// The caller's session.
    pub session: SessionId,
    /// The mapping's pod address.
    pub pod_ip: IpAddr,
    /// The mapping's pod port.
    pub pod_port: u16,
}

/// AddAlias or RemoveAlias, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The caller's session.
    pub session: SessionId,
    /// The address to put on (or take off) the loopback interface.
    pub ip: IpAddr,
}

fn ip(field: &'static str, text: &str) -> Result<IpAddr, Invalid> {
    if text.len() > MAX_ADDR_LEN {
        return Err(Invalid {
            field,
            problem: format!(
                "{} characters is too long for an address (at most {MAX_ADDR_LEN})",
                text.len()
            ),
        });
    }
    if text.is_empty() {
        return Err(Invalid {
            field,
            problem: "is empty; give an address such as 10.244.1.8".to_owned(),
        });
    }
    text.parse().map_err(|_| Invalid {
        field,
        problem: format!("{text:?} is not an IPv4 or IPv6 address"),
    })
}

fn port(field: &'static str, value: u32) -> Result<u16, Invalid> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Invalid {
            field,
            problem: format!("{value} is not a port; ports are 1..=65535"),
        }),
    }
}

impl TryFrom<pb::OpenSessionRequest> for OpenSession {
    type Error = Invalid;
    fn try_from(req: pb::OpenSessionRequest) -> Result<Self, Invalid> {
        let chars = req.label.chars().count();
        if chars > MAX_LABEL_LEN {
            return Err(Invalid {
                field: "label",
                problem: format!("{chars} characters is too long (at most {MAX_LABEL_LEN})"),
            });
        }
        if req.label.chars().any(char::is_control) {
            return Err(Invalid {
                field: "label",
                problem: "contains control characters".to_owned(),
            });
        }
        Ok(OpenSession { label: req.label })
    }
}

impl TryFrom<pb::AddMappingRequest> for AddMapping {
    type Error = Invalid;
    fn try_from(req: pb::AddMappingRequest) -> Result<Self, Invalid> {
        Ok(AddMapping {
            session: SessionId(req.session_id),
            pod_ip: ip("pod_ip", &req.pod_ip)?,
            pod_port: port("pod_port", req.pod_port)?,
            local_ip: match req.local_ip.as_str() {
                "" => None,
                text => Some(ip("local_ip", text)?),
            },
            local_port: port("local_port", req.local_port)?,
        })
    }
}

impl TryFrom<pb::RemoveMappingRequest> for RemoveMapping {
    type Error = Invalid;
    fn try_from(req: pb::RemoveMappingRequest) -> Result<Self, Invalid> {
        Ok(RemoveMapping {
            session: SessionId(req.session_id),
            pod_ip: ip("pod_ip", &req.pod_ip)?,
            pod_port: port("pod_port", req.pod_port)?,
        })
    }
}

impl TryFrom<pb::AddAliasRequest> for Alias {
    type Error = Invalid;
    fn try_from(req: pb::AddAliasRequest) -> Result<Self, Invalid> {
        Ok(Alias {
            session: SessionId(req.session_id),
            ip: ip("ip", &req.ip)?,
        })
    }
}

impl TryFrom<pb::RemoveAliasRequest> for Alias {
    type Error = Invalid;
    fn try_from(req: pb::RemoveAliasRequest) -> Result<Self, Invalid> {
        Ok(Alias {
            session: SessionId(req.session_id),
            ip: ip("ip", &req.ip)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(
        pod_ip: &str,
        pod_port: u32,
        local_ip: &str,
        local_port: u32,
    ) -> Result<AddMapping, Invalid> {
        pb::AddMappingRequest {
            session_id: 1,
            pod_ip: pod_ip.into(),
            pod_port,
            local_port,
            local_ip: local_ip.into(),
        }
        .try_into()
    }

    #[test]
    fn well_formed_requests_convert() {
        let m = add("10.244.1.8", 4369, "", 40000).expect("valid");
        assert_eq!(m.pod_ip, "10.244.1.8".parse::<IpAddr>().unwrap());
        assert_eq!((m.pod_port, m.local_port, m.local_ip), (4369, 40000, None));
        let m = add("fd00::8", 65535, "::1", 1).expect("valid");
        assert_eq!(m.local_ip, Some("::1".parse().unwrap()));
    }

    #[test]
    fn malformed_fields_are_named() {
        let long = "1".repeat(100_000);
        let cases = [
            (add("", 4369, "", 1), "pod_ip"),
            (add("app-0", 4369, "", 1), "pod_ip"),
            (add("10.244.1.8/32", 4369, "", 1), "pod_ip"),
            (add(&long, 4369, "", 1), "pod_ip"),
            (add("10.244.1.8", 0, "", 1), "pod_port"),
            (add("10.244.1.8", 65536, "", 1), "pod_port"),
            (add("10.244.1.8", u32::MAX, "", 1), "pod_port"),
            (add("10.244.1.8", 4369, "", 0), "local_port"),
            (add("10.244.1.8", 4369, "localhost", 1), "local_ip"),
        ];
        for (result, field) in cases {
            let err = result.expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn labels_are_bounded_and_printable() {
        let open = |label: &str| {
            OpenSession::try_from(pb::OpenSessionRequest {
                label: label.into(),
            })
        };
        assert!(open("erlbridge up app-0").is_ok());
        assert!(open(&"x".repeat(129)).is_err());
        assert!(open("a\nb").is_err());
    }
}
