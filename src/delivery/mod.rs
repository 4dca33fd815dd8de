//! Delivery to the collector: when batches leave and what a collector's answer means
//! (`policy`), what a batch looks like on the wire (`sink`), and the key-value spill (`spill`).

pub mod outbox;
pub mod policy;
pub mod sink;
pub mod spill;
