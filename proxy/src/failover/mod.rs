//! Failover control: which backend site serves clients. [`controller`] decides (pure, no
//! IO); a driver feeds it health checks and publishes its decisions.

pub mod controller;
pub mod driver;
pub mod epoch;
pub mod probe;
