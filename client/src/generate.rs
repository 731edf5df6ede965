//! Shell completions and the man pages, generated from the same clap definition as the command
//! line itself, so they never drift. The Debian package ships both.

use clap::CommandFactory;

use crate::cli::Cli;

use std::io::Write as _;

/// The line before each page in `erlbridge man`'s output, naming the page's file: a roff
/// comment, so the whole output still reads as one manual.
pub const PAGE_MARKER: &str = ".\\\" file: ";

/// Writes completions for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> std::io::Result<()> {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "erlbridge", &mut text);
    std::io::stdout().write_all(&text)
}

/// Every man page: erlbridge(1) and one per subcommand (erlbridge-up(1), ...), as file names
/// and roff.
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn add(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let subcommands: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect();
        let man =
            clap_mangen::Man::new(cmd).source(concat!("erlbridge ", env!("CARGO_PKG_VERSION")));
        let mut page = Vec::new();
        man.render(&mut page)?;
        pages.push((man.get_filename(), page));
        for sub in subcommands {
            add(sub, pages)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building names each subcommand for its page (erlbridge-up) and its synopsis.
    cmd.build();
    let mut pages = Vec::new();
    add(cmd, &mut pages)?;
    Ok(pages)
}

/// Writes every man page to stdout, each after a [`PAGE_MARKER`] line naming its file
/// (`scripts/package` splits them).
pub fn man() -> std::io::Result<()> {
    let mut out = Vec::new();
    for (file, page) in pages()? {
        writeln!(out, "{PAGE_MARKER}{file}")?;
        out.extend_from_slice(&page);
    }
    std::io::stdout().write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn page(name: &str) -> String {
        let pages = pages().expect("render");
        let (_, page) = pages
            .into_iter()
            .find(|(file, _)| file == name)
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(page).expect("text")
    }

    #[test]
    fn the_man_page_documents_the_exit_codes() {
        let page = page("erlbridge.1");
        assert!(page.contains(".TH erlbridge 1"), "{page}");
        assert!(page.contains("erlbridge\\-helperd not running"), "{page}");
    }

    #[test]
    fn every_page_referred_to_is_generated() {
        let pages = pages().expect("render");
        let files: Vec<&str> = pages.iter().map(|(file, _)| file.as_str()).collect();
        for name in [
            "erlbridge.1",
            "erlbridge-up.1",
            "erlbridge-remsh.1",
            "erlbridge-observer.1",
            "erlbridge-top.1",
            "erlbridge-eval.1",
            "erlbridge-status.1",
        ] {
            assert!(files.contains(&name), "{name} missing from {files:?}");
        }
        assert!(
            !files.contains(&"erlbridge-man.1"),
            "the hidden command has no page"
        );
        for (file, page) in &pages {
            let page = String::from_utf8_lossy(page).replace("\\-", "-");
            for reference in page.split_whitespace().filter_map(|w| {
                let w = w.trim_start_matches(|c: char| !c.is_alphanumeric());
                w.strip_suffix("(1)").filter(|n| n.starts_with("erlbridge"))
            }) {
                assert!(
                    files.contains(&format!("{reference}.1").as_str()),
                    "{file} refers to {reference}(1), which is not generated"
                );
            }
        }
        let up = page("erlbridge-up.1");
        assert!(up.contains(".TH erlbridge-up 1"), "{up}");
        assert!(
            up.contains("erlbridge up"),
            "the synopsis names the command: {up}"
        );
    }
}
