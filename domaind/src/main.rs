//! domaind binary (being written; see lib.rs).
fn main() {}
