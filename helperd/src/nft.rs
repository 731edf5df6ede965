//! The DNAT rules, in nftables: one table helperd owns (`table inet erlbridge`) and nothing
//! else. A verdict map keyed on `meta skuid . ip daddr . tcp dport` keeps the packet path O(1)
//! however many rules are live, and the uid in every key scopes each rule to its owner.
//!
//! nft text goes through `nft -f -`, one atomic transaction per change: the `nftables` crate
//! cannot express a uid-keyed map, and nft's JSON mishandles `addr . port` map values.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::exec::BackendError;
use crate::policy::Rule;

/// The table helperd owns, as nft names it.
pub const TABLE: &str = "inet erlbridge";

/// Installs and removes DNAT rules. [`Nft`] does it for real; tests use a recording fake.
pub trait NatBackend: Send + Sync + 'static {
    /// Starts from nothing: drops the table (whatever a previous helper left) and creates it
    /// empty.
    fn reset(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Installs one rule.
    fn add(&self, rule: &Rule) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Removes rules, all in one transaction.
    fn remove(&self, rules: &[Rule]) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Drops the table.
    fn teardown(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// What the backend is, for people: `nft --version`'s answer.
    fn version(&self) -> impl Future<Output = String> + Send;
}

/// The real backend: `nft -f -`.
#[derive(Debug, Clone)]
pub struct Nft {
    /// The `nft` binary, by absolute path.
    pub program: PathBuf,
}

/// The script that (re)creates the table, empty. The leading `table` line makes the `delete`
/// succeed when no table exists yet; all three run as one transaction.
pub fn setup_script() -> String {
    format!(
        "table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 map dnat4 {{ typeof meta skuid . ip daddr . tcp dport : ip daddr . tcp dport; }}\n\
         \x20 map dnat6 {{ typeof meta skuid . ip6 daddr . tcp dport : ip6 daddr . tcp dport; }}\n\
         \x20 chain output {{\n\
         \x20   type nat hook output priority -100; policy accept;\n\
         \x20   meta nfproto ipv4 dnat ip to meta skuid . ip daddr . tcp dport map @dnat4\n\
         \x20   meta nfproto ipv6 dnat ip6 to meta skuid . ip6 daddr . tcp dport map @dnat6\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The script that drops the table, whether or not it exists.
pub fn teardown_script() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

fn map_of(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "dnat4" } else { "dnat6" }
}

fn key(rule: &Rule) -> String {
    format!("{} . {} . {}", rule.uid, rule.pod.ip(), rule.pod.port())
}

/// The script that installs one rule.
pub fn add_script(rule: &Rule) -> String {
    format!(
        "add element {TABLE} {} {{ {} : {} . {} }}\n",
        map_of(&rule.pod),
        key(rule),
        rule.target.ip(),
        rule.target.port()
    )
}

/// The script that removes rules, grouped by map, as one transaction.
pub fn remove_script(rules: &[Rule]) -> String {
    let mut script = String::new();
    for map in ["dnat4", "dnat6"] {
        let keys: Vec<String> = rules
            .iter()
            .filter(|r| map_of(&r.pod) == map)
            .map(key)
            .collect();
        if !keys.is_empty() {
            let _ = writeln!(
                script,
                "delete element {TABLE} {map} {{ {} }}",
                keys.join(", ")
            );
        }
    }
    script
}

impl Nft {
    async fn apply(&self, script: &str) -> Result<(), BackendError> {
        crate::exec::run(&self.program, &["-f", "-"], script).await
    }
}

impl NatBackend for Nft {
    async fn reset(&self) -> Result<(), BackendError> {
        self.apply(&setup_script()).await
    }

    async fn add(&self, rule: &Rule) -> Result<(), BackendError> {
        self.apply(&add_script(rule)).await
    }

    async fn remove(&self, rules: &[Rule]) -> Result<(), BackendError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.apply(&remove_script(rules)).await
    }

    async fn teardown(&self) -> Result<(), BackendError> {
        self.apply(&teardown_script()).await
    }

    async fn version(&self) -> String {
        crate::exec::output(&self.program, &["--version"])
            .await
            .map(|version| format!("{version} ({})", self.program.display()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(uid: u32, pod: &str, target: &str) -> Rule {
        Rule {
            uid,
            pod: pod.parse().unwrap(),
            target: target.parse().unwrap(),
        }
    }

    #[test]
    fn scripts_touch_only_the_helpers_table() {
        let rules = [
            rule(1000, "10.244.1.8:4369", "127.0.0.1:40000"),
            rule(1000, "[fd00::8]:4369", "[::1]:40001"),
        ];
        for script in [
            setup_script(),
            teardown_script(),
            add_script(&rules[0]),
            add_script(&rules[1]),
            remove_script(&rules),
        ] {
            for line in script.lines().filter(|l| !l.starts_with(' ') && *l != "}") {
                assert!(line.contains("inet erlbridge"), "{line:?} in\n{script}");
            }
        }
    }

    #[test]
    fn elements_carry_the_uid_and_the_family() {
        assert_eq!(
            add_script(&rule(1000, "10.244.1.8:4369", "127.0.0.1:40000")),
            "add element inet erlbridge dnat4 { 1000 . 10.244.1.8 . 4369 : 127.0.0.1 . 40000 }\n"
        );
        assert_eq!(
            add_script(&rule(7, "[fd00::8]:5555", "[::1]:1")),
            "add element inet erlbridge dnat6 { 7 . fd00::8 . 5555 : ::1 . 1 }\n"
        );
        assert_eq!(
            remove_script(&[
                rule(1, "10.0.0.1:1", "127.0.0.1:2"),
                rule(1, "10.0.0.2:1", "127.0.0.1:3"),
                rule(1, "[fd00::1]:1", "[::1]:3"),
            ]),
            "delete element inet erlbridge dnat4 { 1 . 10.0.0.1 . 1, 1 . 10.0.0.2 . 1 }\n\
             delete element inet erlbridge dnat6 { 1 . fd00::1 . 1 }\n"
        );
    }
}
