//! The attacks hapki holds against, one module each, named after the attack. Each module says
//! what the attacker does and what hapki must do instead; each test performs the attack for real.

#[path = "../support/bundle.rs"]
mod bundle;

mod tar_header_fields;
mod unscoped_trust_line;
