//! The ERL_INETRC file that lets a local node resolve DNS-named pod nodes
//! (`app@app-0.app.default.svc.cluster.local`) to their pod IPs without root: Erlang's inet
//! reads `{host, IP, [Names]}` entries from it, then falls back to the system resolver.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::runtime::RuntimeDir;

/// The file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the ERL_INETRC file in {dir}")]
pub struct InetrcError {
    /// The runtime directory.
    pub dir: PathBuf,
    /// What the system said.
    #[source]
    pub source: std::io::Error,
}

/// The file's name in the runtime directory.
pub const FILE: &str = "inetrc";

/// Writes (or rewrites, at once) the mapping of `hosts` (pod IP, DNS name) into `dir`.
pub fn write(dir: &RuntimeDir, hosts: &[(IpAddr, String)]) -> Result<PathBuf, InetrcError> {
    dir.write(FILE, text(hosts).as_bytes())
        .map_err(|source| InetrcError {
            dir: dir.path().to_owned(),
            source,
        })
}

/// The inetrc text mapping DNS names to pod IPs, then falling back to the system resolver.
pub fn text(hosts: &[(IpAddr, String)]) -> String {
    let mut text = String::new();
    for (ip, name) in hosts {
        let tuple = match ip {
            IpAddr::V4(v4) => v4.octets().map(|o| o.to_string()).join(","),
            IpAddr::V6(v6) => v6.segments().map(|s| s.to_string()).join(","),
        };
        text.push_str(&format!("{{host, {{{tuple}}}, [\"{name}\"]}}.\n"));
    }
    text.push_str("{lookup, [file, native]}.\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inetrc_maps_names_to_pod_ips() {
        let text = text(&[
            (
                "10.244.1.8".parse().unwrap(),
                "app-0.app.default.svc.cluster.local".into(),
            ),
            (
                "fd00::8".parse().unwrap(),
                "app-1.app.default.svc.cluster.local".into(),
            ),
        ]);
        assert_eq!(
            text,
            "{host, {10,244,1,8}, [\"app-0.app.default.svc.cluster.local\"]}.\n\
             {host, {64768,0,0,0,0,0,0,8}, [\"app-1.app.default.svc.cluster.local\"]}.\n\
             {lookup, [file, native]}.\n"
        );
    }
}
