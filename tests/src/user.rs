//! Unprivileged identities for the processes a test runs, through `setpriv`.

use std::process::Command;

/// An unprivileged uid with its primary and supplementary groups. No passwd entry is needed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The gid tests give the helper as its access group.
pub const ACCESS_GID: u32 = 61000;

impl User {
    /// A member of the access group (as a supplementary group, the usual case).
    pub fn member(uid: u32) -> User {
        User {
            uid,
            gid: uid,
            groups: vec![ACCESS_GID],
        }
    }

    /// A uid in no group the helper knows.
    pub fn outsider(uid: u32) -> User {
        User {
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    /// `setpriv` arguments that run the rest of the command line as this user, with a clean
    /// environment but for `HOME` and `PATH`.
    pub fn wrap(&self, home: &str, argv: &[&str]) -> Vec<String> {
        let mut args = vec![
            "setpriv".to_owned(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
        ];
        if self.groups.is_empty() {
            args.push("--clear-groups".to_owned());
        } else {
            let groups: Vec<String> = self.groups.iter().map(ToString::to_string).collect();
            args.push(format!("--groups={}", groups.join(",")));
        }
        args.extend(
            [
                "--",
                "env",
                "-i",
                &format!("HOME={home}"),
                "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            ]
            .map(String::from),
        );
        args.extend(argv.iter().map(|a| (*a).to_owned()));
        args
    }

    /// A command that runs `argv` as this user.
    pub fn command(&self, home: &str, argv: &[&str]) -> Command {
        let args = self.wrap(home, argv);
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]);
        cmd
    }
}
