//! One mapping from failures to the exit codes operators' scripts rely on
//! (see the interface document): every library error type says which [`Category`] it is in,
//! and only the binary turns a category into a process exit code.

/// What kind of failure ended a command. The binary maps these to exit codes 1–6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Exit 1: a bug, an I/O failure on the operator's machine, anything unexpected.
    Unexpected,
    /// Exit 2: the command line or an input file is malformed (clap uses 2 as well).
    Usage,
    /// Exit 3: signature, hash, archive layout, expiry, rollback, or an incoherent PKI.
    Verification,
    /// Exit 4: an SSH host key is unknown or changed.
    HostKey,
    /// Exit 5: some nodes failed; the rest completed.
    NodesFailed,
    /// Exit 6: audit or preflight found problems.
    Findings,
}

impl Category {
    /// The process exit code documented in the interface.
    pub fn exit_code(self) -> u8 {
        match self {
            Category::Unexpected => 1,
            Category::Usage => 2,
            Category::Verification => 3,
            Category::HostKey => 4,
            Category::NodesFailed => 5,
            Category::Findings => 6,
        }
    }
}

/// Implemented by every public error type of the library so the binary can pick an exit code
/// without string matching.
pub trait Categorized {
    fn category(&self) -> Category;
}
