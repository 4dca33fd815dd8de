//! The HTTP API: routing, limits, credentials, CORS, rate limits, request bodies and query
//! strings, and RFC 9457 problem documents.

pub mod auth;
pub mod body;
pub mod cors;
pub mod problem;
pub mod query;
pub mod rate_limit;
pub mod routes;
