//! Journal streaming from the primary site to the replica site.
//!
//! # Layout
//! - [`frame`]: the protocol's frames and their wire form (pure; no IO).
//!
//! The shipper (primary side), the receiver and the applier (replica side) build on these.
//! **The stream carries journal records verbatim**: the replica re-checks every record's
//! body hash and hash chain before it writes anything, so a replica journal is always a
//! prefix-consistent copy of the primary's.

pub mod frame;
