//! The attacks hapki holds against, one module each, named after the attack. Every module
//! performs its attack for real (on the testbed where a node is involved, as an unprivileged
//! local user where the attacker is one) and checks what an independent source says.

#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/testbed.rs"]
mod testbed;

/// Shared by the node-side attacks: bundles, pushes, and running the node script by hand.
mod hand_run;

mod artifact_staging_swap;
mod backup_deleted_by_a_later_push;
mod concurrent_pushes_share_the_lock;
mod downgrade_by_an_older_serial;
mod pinned_trust_file_on_the_node;
mod pki_staging_in_a_user_directory;
mod shared_dest_staging_deleted;
mod tampered_install_instructions;
mod unreadable_keys_without_become;
