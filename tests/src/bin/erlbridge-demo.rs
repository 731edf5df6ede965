//! erlbridge-demo (needs root): shows, on the built-in test bed, what erlbridge does for an
//! ordinary user. A workstation namespace whose route to the pod network leads nowhere,
//! erlbridge-helperd running as root, and an unprivileged user whose connections to a pod
//! address are redirected to a local listener while another user's are not.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use erlbridge_testbed::{Bins, Helperd, User, Workstation, require_root};

const POD: &str = "10.244.1.8:4369";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erlbridge-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn connect(ws: &Workstation, bins: &Bins, user: &User) -> anyhow::Result<String> {
    let probe = bins.path("helper-probe");
    let (_, out, _) = ws.run_as(user, &[&probe, "connect", POD])?;
    Ok(out.trim().to_owned())
}

fn run() -> anyhow::Result<()> {
    require_root();
    let bins = Bins::stage(&["erlbridge-helperd", "helper-probe"])?;
    let ws = Workstation::new()?;
    let helperd = Helperd::start(&ws, &bins, "")?;
    let alice = User::member(61001);
    let bob = User::member(61002);
    println!(
        "workstation namespace {} is up; erlbridge-helperd runs there as root",
        ws.ns.name()
    );

    let probe = bins.path("helper-probe");
    let mut listener = ws.spawn_root(&[&probe, "listen", "127.0.0.1:40000"])?;
    listener.wait_line(Duration::from_secs(5), |l| l.contains("listening"))?;
    println!("a local listener (standing in for a port-forward) waits on 127.0.0.1:40000");

    println!(
        "\n1. without erlbridge, uid {} dials the pod {POD}:",
        alice.uid
    );
    println!("   {}", connect(&ws, &bins, &alice)?);

    let socket = helperd.socket.display().to_string();
    let map = format!("{POD}=40000");
    let mut holder = ws.spawn_as(
        &alice,
        &[&probe, "--socket", &socket, "hold", "--map", &map],
    )?;
    let line = holder
        .wait_line(Duration::from_secs(10), |l| {
            l.contains("ready") || l.contains("code")
        })
        .context("the helper session")?;
    println!(
        "\n2. uid {} (no sudo) asks the helper for {POD} -> 127.0.0.1:40000: {line}",
        alice.uid
    );
    println!(
        "   uid {} dials {POD}: {}",
        alice.uid,
        connect(&ws, &bins, &alice)?
    );
    println!(
        "   uid {} dials {POD}: {}",
        bob.uid,
        connect(&ws, &bins, &bob)?
    );
    println!("\n   the helper's table (nothing else in the ruleset is touched):");
    for line in ws.helper_table().unwrap_or_default().lines() {
        println!("   {line}");
    }

    holder.signal(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    println!("\n3. the client is killed (kill -9); its rules went with its session:");
    let table = ws.helper_table().unwrap_or_default();
    let left = table.contains("elements");
    println!(
        "   mappings left in the table: {}",
        if left { "some (unexpected!)" } else { "none" }
    );
    println!(
        "   uid {} dials {POD}: {}",
        alice.uid,
        connect(&ws, &bins, &alice)?
    );
    anyhow::ensure!(!left, "the killed client's rules are still there");
    println!("\nthe namespace and every process in it are removed now.");
    Ok(())
}
