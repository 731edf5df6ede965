//! helperd's configuration file (`/etc/erlbridge/helperd.toml`), read once at start.
//!
//! Every key is optional; a missing file means every default. Anything unknown or out of range
//! is refused at start with the key's name, so a typo never silently widens the policy.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/erlbridge/helperd.toml";

/// Networks pod addresses may come from unless configured: the private ranges Kubernetes
/// clusters use for pods.
pub const DEFAULT_CIDRS: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fd00::/8",
];

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The Unix socket helperd binds when systemd does not hand it one.
    pub socket: PathBuf,
    /// The group whose members may use the helper.
    pub group: GroupSpec,
    /// Uids allowed without the group (CI runners, tests).
    pub allowed_uids: Vec<u32>,
    /// Pod addresses must fall inside one of these.
    pub allowed_cidrs: Vec<IpNet>,
    /// Live mappings one uid may hold across its sessions.
    pub max_rules_per_uid: u32,
    /// Sessions one uid may hold open at once.
    pub max_sessions_per_uid: u32,
    /// Loopback aliases one uid may hold across its sessions.
    pub max_aliases_per_uid: u32,
    /// Whether loopback aliases may be added at all (they are host-wide).
    pub aliases: bool,
    /// The `nft` binary, by absolute path.
    pub nft: PathBuf,
    /// The `ip` binary, by absolute path.
    pub ip: PathBuf,
}

/// The access group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupSpec {
    /// A group name, looked up in the group database at start.
    Name(String),
    /// A numeric gid.
    Gid(u32),
}

impl std::fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupSpec::Name(name) => f.write_str(name),
            GroupSpec::Gid(gid) => write!(f, "gid {gid}"),
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's description, which names the key and line.
        message: String,
    },
    /// A key has a value helperd cannot use.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<PathBuf>,
    group: Option<GroupSpec>,
    allowed_uids: Option<Vec<u32>>,
    allowed_cidrs: Option<Vec<String>>,
    max_rules_per_uid: Option<u32>,
    max_sessions_per_uid: Option<u32>,
    max_aliases_per_uid: Option<u32>,
    aliases: Option<bool>,
    nft: Option<PathBuf>,
    ip: Option<PathBuf>,
}

impl Config {
    /// Reads `path`; a file that does not exist means the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::parse(path, ""),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        let cidrs = match raw.allowed_cidrs {
            Some(list) => list
                .iter()
                .map(|s| {
                    s.parse::<IpNet>().map_err(|_| {
                        invalid(
                            "allowed_cidrs",
                            format!("{s:?} is not a network; write it like \"10.0.0.0/8\" or \"fd00::/8\""),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => DEFAULT_CIDRS
                .iter()
                .map(|s| s.parse().expect("the default networks parse"))
                .collect(),
        };
        for net in &cidrs {
            if net.trunc() != *net {
                return Err(invalid(
                    "allowed_cidrs",
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
        }

        let positive = |key, value: Option<u32>, default: u32| match value {
            Some(0) => Err(invalid(key, "must be at least 1".to_owned())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let absolute = |key, value: Option<PathBuf>, default: &str| {
            let path = value.unwrap_or_else(|| PathBuf::from(default));
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(invalid(
                    key,
                    format!("{} is not an absolute path", path.display()),
                ))
            }
        };

        let group = raw
            .group
            .unwrap_or_else(|| GroupSpec::Name("erlbridge".to_owned()));
        if matches!(&group, GroupSpec::Name(n) if n.is_empty()) {
            return Err(invalid("group", "must not be empty".to_owned()));
        }

        Ok(Config {
            socket: absolute("socket", raw.socket, erlbridge_proto::DEFAULT_SOCKET)?,
            group,
            allowed_uids: raw.allowed_uids.unwrap_or_default(),
            allowed_cidrs: cidrs,
            max_rules_per_uid: positive("max_rules_per_uid", raw.max_rules_per_uid, 256)?,
            max_sessions_per_uid: positive("max_sessions_per_uid", raw.max_sessions_per_uid, 16)?,
            max_aliases_per_uid: positive("max_aliases_per_uid", raw.max_aliases_per_uid, 64)?,
            aliases: raw.aliases.unwrap_or(false),
            nft: absolute("nft", raw.nft, "/usr/sbin/nft")?,
            ip: absolute("ip", raw.ip, "/usr/sbin/ip")?,
        })
    }

    /// Whether `ip` lies inside one of the allowed networks.
    pub fn allows_network(&self, ip: IpAddr) -> bool {
        self.allowed_cidrs.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("helperd.toml"), text)
    }

    #[test]
    fn empty_file_means_defaults() {
        let config = parse("").expect("defaults");
        assert_eq!(config.socket, PathBuf::from("/run/erlbridge/helper.sock"));
        assert_eq!(config.group, GroupSpec::Name("erlbridge".into()));
        assert_eq!(config.allowed_cidrs.len(), 5);
        assert_eq!(config.max_rules_per_uid, 256);
        assert!(!config.aliases);
        assert_eq!(config.nft, PathBuf::from("/usr/sbin/nft"));
    }

    #[test]
    fn the_packaged_file_states_the_defaults() {
        let packaged = parse(include_str!("../../packaging/helperd.toml")).expect("valid");
        assert_eq!(packaged, parse("").expect("defaults"));
    }

    #[test]
    fn missing_file_means_defaults() {
        let config = Config::load(Path::new("/nonexistent/helperd.toml")).expect("defaults");
        assert_eq!(config, parse("").expect("defaults"));
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
            socket = "/tmp/h.sock"
            group = 4242
            allowed_uids = [1000, 1001]
            allowed_cidrs = ["10.244.0.0/16"]
            max_rules_per_uid = 8
            max_sessions_per_uid = 2
            max_aliases_per_uid = 3
            aliases = true
            nft = "/sbin/nft"
            ip = "/sbin/ip"
            "#,
        )
        .expect("valid");
        assert_eq!(config.group, GroupSpec::Gid(4242));
        assert_eq!(config.allowed_uids, vec![1000, 1001]);
        assert_eq!(
            config.allowed_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            (config.max_rules_per_uid, config.max_sessions_per_uid),
            (8, 2)
        );
        assert_eq!(config.max_aliases_per_uid, 3);
        assert!(config.aliases);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("allowed_cidrs = [\"10.0.0.0/33\"]", "allowed_cidrs"),
            ("allowed_cidrs = [\"10.1.2.3/8\"]", "allowed_cidrs"),
            ("max_rules_per_uid = 0", "max_rules_per_uid"),
            ("max_rules_per_uid = -1", "max_rules_per_uid"),
            ("nft = \"nft\"", "nft"),
            ("socket = \"helper.sock\"", "socket"),
            ("aliases = \"yes\"", "aliases"),
            ("group = \"\"", "group"),
            ("allowed_cidr = []", "allowed_cidr"),
            ("allowed_uids = [\"root\"]", "allowed_uids"),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
    }
}
