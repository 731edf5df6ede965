//! Shell completions and the man page, generated from the same clap definition as the command
//! line itself, so they never drift. The Debian package ships both.

use clap::CommandFactory;

use crate::cli::Cli;

use std::io::Write as _;

/// Writes completions for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) -> std::io::Result<()> {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "erlbridge", &mut text);
    std::io::stdout().write_all(&text)
}

/// Writes the erlbridge(1) man page (roff) to stdout.
pub fn man() -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    std::io::stdout().write_all(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_man_page_documents_the_exit_codes() {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .expect("render");
        let page = String::from_utf8(page).expect("text");
        assert!(page.contains(".TH erlbridge 1"), "{page}");
        assert!(page.contains("erlbridge\\-helperd not running"), "{page}");
    }
}
