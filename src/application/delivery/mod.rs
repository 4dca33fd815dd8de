//! Delivery to the collector: one engine for every host (`outbox`), when batches leave and what
//! a collector's answer means (`policy`), what a batch looks like on the wire (`sink`), how a
//! segment is kept in a store (`segment`, `slots`), the outbox every instance of a Spin app
//! shares in SQLite (`shared_outbox`), and what earlier releases left in key-value
//! (`legacy_kv`).

pub mod legacy_kv;
pub mod outbox;
pub mod policy;
pub mod segment;
pub mod shared_outbox;
pub mod sink;
pub mod slots;
