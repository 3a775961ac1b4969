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

    /// The category that decides the exit code when several things failed: a host-key failure
    /// outranks a verification failure, which outranks a failed node, which outranks findings;
    /// an unexpected error and a usage error come last (a run that reached nodes has a more
    /// telling answer). `None` for no failure.
    pub fn worst(categories: impl IntoIterator<Item = Category>) -> Option<Category> {
        categories.into_iter().min_by_key(|c| c.rank())
    }

    fn rank(self) -> u8 {
        match self {
            Category::HostKey => 0,
            Category::Verification => 1,
            Category::NodesFailed => 2,
            Category::Findings => 3,
            Category::Unexpected => 4,
            Category::Usage => 5,
        }
    }

    /// The exit code of a command whose outcome is `category` (0 for none).
    pub fn exit_code_of(category: Option<Category>) -> u8 {
        category.map_or(0, Category::exit_code)
    }
}

/// Implemented by every public error type of the library so the binary can pick an exit code
/// without string matching.
pub trait Categorized {
    fn category(&self) -> Category;
}
