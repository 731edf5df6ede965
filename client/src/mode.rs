//! The two ways a local node reaches a pod node (DESIGN.md, "Two ways"), and `--mode`, which
//! picks one or lets erlbridge pick.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The way pod nodes are made reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Through erlbridge-helperd's uid-scoped DNAT.
    Nat,
    /// Through erlbridge's epmd module in local nodes started with it.
    Epmd,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Epmd => "epmd",
        })
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// nat when erlbridge-helperd answers, else epmd.
    Auto,
    /// Through erlbridge-helperd (it must be installed and let you in).
    Nat,
    /// Through the epmd module, with no helper and no privilege.
    Epmd,
}
