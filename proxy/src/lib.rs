//! placeholder
pub mod mailstack;
