//! The attacks hapki holds against, one module each, named after the attack. Every module
//! performs its attack for real (on the testbed where a node is involved, as an unprivileged
//! local user where the attacker is one) and checks what an independent source says.
// bundle.rs and fixture.rs each include cli.rs for themselves (as every test binary does); this
// one binary uses both.
#![allow(clippy::duplicate_mod)]

#[path = "../support/bundle.rs"]
mod bundle;
#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/standin.rs"]
mod standin;
#[path = "../support/testbed.rs"]
mod testbed;

/// Shared by the node-side attacks: bundles, pushes, and running the node script by hand.
mod hand_run;
/// Shared by the join attacks: a stand-in cluster with its first master initialised.
mod join_common;

mod artifact_staging_swap;
mod backup_deleted_by_a_later_push;
mod concurrent_pushes_share_the_lock;
mod downgrade_by_an_older_serial;
mod host_key_outside_known_hosts;
mod hostile_node_flood;
mod join_run_dir_planted_symlink;
mod join_token_in_process_list;
mod pinned_trust_file_on_the_node;
mod pki_staging_in_a_user_directory;
mod rotate_state_dir_planted_by_a_user;
mod shared_dest_staging_deleted;
mod tampered_install_instructions;
mod tar_header_fields;
mod terminal_escapes_from_nodes;
mod unreadable_keys_without_become;
mod unscoped_trust_line;
