//! Delivery to the collector: one engine for every host (`outbox`), when batches leave and what
//! a collector's answer means (`policy`), what a batch looks like on the wire (`sink`), and how a
//! segment is kept in a store (`segment`, and `kv_store` for a shared key-value store).

#![forbid(unsafe_code)]

pub mod kv_store;
pub mod outbox;
pub mod policy;
pub mod segment;
pub mod sink;
pub mod slots;
