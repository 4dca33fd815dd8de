//! End-to-end test support: the shared harness (`xtask::harness`) and the behaviour every host
//! must show (`scenario`), the hostile-input suite (`hostile`) and the sinks (`sinks`).
#![allow(dead_code)] // each test binary uses a different part

pub mod hostile;
pub mod registry;
pub mod scenario;
pub mod sinks;
pub mod traffic;

pub use xtask::harness::*;
