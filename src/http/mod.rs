//! The HTTP API: the one request pipeline of every host (`pipeline`), routing and the checks
//! before and after the body (`routes`), answers (`answer`), credentials (`auth`), CORS
//! (`cors`), request bodies and query strings (`body`, `query`),
//! and RFC 9457 problem documents (`problem`).

pub mod answer;
pub mod auth;
pub mod body;
pub mod cors;
pub mod deployment;
pub mod instance_state;
pub mod jwt;
pub mod pipeline;
pub mod problem;
pub mod query;
pub mod routes;
pub mod sender_budget;
