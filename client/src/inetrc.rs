//! The ERL_INETRC file that lets a local node resolve DNS-named pod nodes
//! (`app@app-0.app.default.svc.cluster.local`) to their pod IPs without root: Erlang's inet
//! reads `{host, IP, [Names]}` entries from it, then falls back to the system resolver.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// An inetrc file of this process's; removed when dropped.
#[derive(Debug)]
pub struct Inetrc {
    path: PathBuf,
}

/// The file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the ERL_INETRC file {path}")]
pub struct InetrcError {
    /// The file.
    pub path: PathBuf,
    /// What the system said.
    #[source]
    pub source: std::io::Error,
}

impl Inetrc {
    /// A file in `$XDG_RUNTIME_DIR` (else the temporary directory), named after this process;
    /// nothing is written yet.
    pub fn new() -> Inetrc {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        Inetrc {
            path: dir.join(format!("erlbridge-{}.inetrc", std::process::id())),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the mapping of `hosts` (pod IP, DNS name).
    pub fn write(&self, hosts: &[(IpAddr, String)]) -> Result<(), InetrcError> {
        std::fs::write(&self.path, text(hosts)).map_err(|source| InetrcError {
            path: self.path.clone(),
            source,
        })
    }
}

impl Default for Inetrc {
    fn default() -> Inetrc {
        Inetrc::new()
    }
}

impl Drop for Inetrc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

    #[test]
    fn the_file_goes_with_its_owner() {
        let file = Inetrc::new();
        file.write(&[("10.0.0.1".parse().unwrap(), "a.b".into())])
            .unwrap();
        let path = file.path().to_owned();
        assert!(path.exists());
        drop(file);
        assert!(!path.exists());
    }
}
