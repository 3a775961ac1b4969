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
pub struct ManArgs {
    /// The command whose page to print, e.g. `push` or `pki check` (the pages hapki(1) lists
    /// as hapki-push(1), hapki-pki-check(1)); default: hapki(1).
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "hapki", &mut std::io::stdout());
    Ok(0)
}

pub fn man(args: ManArgs) -> anyhow::Result<u8> {
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut title = "hapki".to_owned();
    for word in &args.command {
        let Some(sub) = cmd.find_subcommand(word).cloned() else {
            let known: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
            return Err(super::usage_error(format!(
                "no manual page for {title} {word}; {title} has: {}",
                known.join(", ")
            )));
        };
        title = format!("{title}-{word}");
        cmd = sub;
    }
    // clap names are &'static str (no "string" feature); one page per process, so leak it.
    let title: &'static str = Box::leak(title.into_boxed_str());
    clap_mangen::Man::new(cmd.name(title)).render(&mut std::io::stdout())?;
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
