//! Shell completions and the man page, generated from the clap definitions so they never drift.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "hapki", &mut std::io::stdout());
    Ok(0)
}

pub fn man(_args: ManArgs) -> anyhow::Result<u8> {
    let cmd = super::Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every command and flag (conflicts, requires,
    /// value names, duplicate shorts…), which otherwise fire only when a flag is used.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::super::Cli::command().debug_assert();
    }
}
