//! Developer tasks for edge-enrich. Native only: it drives host processes.

pub mod bench;
pub mod fleet;
pub mod harness;
pub mod sim;
