//! The attacks hapki holds against, one module each, named after the attack. Each module says
//! what the attacker does and what hapki must do instead; each test performs the attack for real.
// bundle.rs and fixture.rs each include cli.rs for themselves (as every test binary does); this
// one binary uses both.
#![allow(clippy::duplicate_mod)]

#[path = "../support/bundle.rs"]
mod bundle;
#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/fixture.rs"]
mod fixture;
#[path = "../support/testbed.rs"]
mod testbed;

mod host_key_outside_known_hosts;
mod hostile_node_flood;
mod tar_header_fields;
mod terminal_escapes_from_nodes;
mod unscoped_trust_line;
