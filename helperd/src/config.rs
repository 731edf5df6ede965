//! helperd's configuration file (`/etc/erlbridge/helperd.toml`), read once at start.
//!
//! Every key is optional; a missing file means every default. Anything unknown or out of range
//! is refused at start with the key's name, so a typo never silently widens the policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// How many connections per uid the default allows beyond `max_sessions_per_uid`.
const CONNECTIONS_ABOVE_SESSIONS: u32 = 4;
/// The most connections the helper will hold; each costs a descriptor and some memory.
pub const MAX_CONNECTIONS: u32 = 65_536;
/// The longest idle timeout accepted.
const MAX_IDLE_TIMEOUT_SECONDS: u32 = 3600;

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
    /// Connections one uid may hold open at once.
    pub max_connections_per_uid: u32,
    /// Connections the helper holds open at once, across every uid.
    pub max_connections: u32,
    /// How long a connection may stay open with no session and no call in progress.
    pub idle_timeout: Duration,
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
    #[error("its config {path} cannot be read")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("its config {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where in the file and toml's description, which names the key.
        message: String,
    },
    /// A key has a value helperd cannot use.
    #[error("its config {path} is invalid: `{key}`: {message}")]
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
    max_connections_per_uid: Option<u32>,
    max_connections: Option<u32>,
    idle_timeout_seconds: Option<u32>,
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
            message: one_line(text, &e),
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

        let max_sessions_per_uid = positive("max_sessions_per_uid", raw.max_sessions_per_uid, 16)?;
        // Every running erlbridge holds one connection for its session, and a few more come and
        // go (status, doctor): a little above the session quota by default.
        let max_connections_per_uid = positive(
            "max_connections_per_uid",
            raw.max_connections_per_uid,
            max_sessions_per_uid.saturating_add(CONNECTIONS_ABOVE_SESSIONS),
        )?;
        if max_connections_per_uid < max_sessions_per_uid {
            return Err(invalid(
                "max_connections_per_uid",
                format!(
                    "{max_connections_per_uid} is below max_sessions_per_uid \
                     ({max_sessions_per_uid}); every session needs its own connection, so make it \
                     at least that"
                ),
            ));
        }
        let max_connections = positive("max_connections", raw.max_connections, 512)?;
        if max_connections < max_connections_per_uid {
            return Err(invalid(
                "max_connections",
                format!(
                    "{max_connections} is below max_connections_per_uid \
                     ({max_connections_per_uid}); make it at least that"
                ),
            ));
        }
        if max_connections > MAX_CONNECTIONS {
            return Err(invalid(
                "max_connections",
                format!("{max_connections} is more than the helper supports ({MAX_CONNECTIONS})"),
            ));
        }
        let idle_timeout_seconds = positive("idle_timeout_seconds", raw.idle_timeout_seconds, 10)?;
        if idle_timeout_seconds > MAX_IDLE_TIMEOUT_SECONDS {
            return Err(invalid(
                "idle_timeout_seconds",
                format!("{idle_timeout_seconds} is more than {MAX_IDLE_TIMEOUT_SECONDS} (an hour)"),
            ));
        }

        Ok(Config {
            socket: absolute("socket", raw.socket, erlbridge_proto::DEFAULT_SOCKET)?,
            group,
            allowed_uids: raw.allowed_uids.unwrap_or_default(),
            allowed_cidrs: cidrs,
            max_rules_per_uid: positive("max_rules_per_uid", raw.max_rules_per_uid, 256)?,
            max_sessions_per_uid,
            max_aliases_per_uid: positive("max_aliases_per_uid", raw.max_aliases_per_uid, 64)?,
            aliases: raw.aliases.unwrap_or(false),
            max_connections_per_uid,
            max_connections,
            idle_timeout: Duration::from_secs(idle_timeout_seconds.into()),
            nft: absolute("nft", raw.nft, "/usr/sbin/nft")?,
            ip: absolute("ip", raw.ip, "/usr/sbin/ip")?,
        })
    }
}

/// toml's error on one line, with the line it is about ("line 3 (`aliases = \"yes\"`): invalid
/// type: ..."), for the log and for the answer a helper that could not start gives.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', "; ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let number = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    match text.lines().nth(number).map(str::trim) {
        Some(line) if !line.is_empty() => {
            let line: String = line.chars().take(80).collect();
            format!("line {} (`{line}`): {message}", number + 1)
        }
        _ => format!("line {}: {message}", number + 1),
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
        assert_eq!(
            (config.max_connections_per_uid, config.max_connections),
            (20, 512)
        );
        assert_eq!(config.idle_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_connection_cap_per_uid_follows_the_session_quota() {
        let config = parse("max_sessions_per_uid = 40").expect("valid");
        assert_eq!(config.max_connections_per_uid, 44);
        let config =
            parse("max_sessions_per_uid = 40\nmax_connections_per_uid = 40").expect("valid");
        assert_eq!(config.max_connections_per_uid, 40);
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
            max_connections_per_uid = 5
            max_connections = 50
            idle_timeout_seconds = 3
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
        assert_eq!(
            (config.max_connections_per_uid, config.max_connections),
            (5, 50)
        );
        assert_eq!(config.idle_timeout, Duration::from_secs(3));
        assert_eq!(
            (config.nft, config.ip),
            (PathBuf::from("/sbin/nft"), PathBuf::from("/sbin/ip"))
        );
    }

    #[test]
    fn a_syntax_error_is_one_line_naming_the_line() {
        let err = parse("aliases = true\nmax_rules_per_uid = \"x\"\n").expect_err("a string");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "its config helperd.toml is invalid: line 2 (`max_rules_per_uid = \"x\"`): "
            ),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text:?}");
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
            ("max_connections_per_uid = 0", "max_connections_per_uid"),
            ("max_connections_per_uid = 15", "max_connections_per_uid"),
            ("max_connections = 10", "max_connections"),
            ("max_connections = 100000", "max_connections"),
            ("idle_timeout_seconds = 0", "idle_timeout_seconds"),
            ("idle_timeout_seconds = 86400", "idle_timeout_seconds"),
            ("idle_timeout_seconds = 1.5", "idle_timeout_seconds"),
        ];
        for (text, key) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text:?}: {err:?} does not name {key}");
        }
    }
}
