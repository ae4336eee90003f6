//! Journal streaming from the primary site to the replica site.
//!
//! # Layout
//! - [`frame`]: the protocol's frames and their wire form (pure; no IO).
//! - [`conn`]: a framed connection with bounded frames and waits.
//! - [`tls`], [`auth`]: who may stream (replica certificate; client certificate or token).
//! - [`shipper`]: the primary side, inside `levee run`.
//! - [`receiver`]: the replica side, inside `levee replica`.
//!
//! The shipper (primary side), the receiver and the applier (replica side) build on these.
//! **The stream carries journal records verbatim**: the replica re-checks every record's
//! body hash and hash chain before it writes anything, so a replica journal is always a
//! prefix-consistent copy of the primary's.

pub mod auth;
pub mod conn;
pub mod frame;
pub mod metrics;
pub mod receiver;
pub mod shipper;
pub mod tls;
