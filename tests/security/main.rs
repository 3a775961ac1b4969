//! The attacks hapki holds against, one module per attack, each performed for real (on the
//! testbed where a node is involved, as a non-root user where the attacker is a local user).

#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/standin.rs"]
mod standin;
#[path = "../support/testbed.rs"]
mod testbed;

mod join_common;

mod join_run_dir_planted_symlink;
mod join_token_in_process_list;
