//! The `hapki` binary: parse, call the library, print, exit with the documented code.
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
