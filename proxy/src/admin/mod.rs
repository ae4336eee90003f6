//! The admin surface's access control: bearer tokens kept as Argon2id hashes in a tokens
//! file ([`tokens`]), with roles, and a per-address limit on failed logins ([`limiter`]).
//! `levee admin token` makes tokens.

pub mod limiter;
pub mod tokens;

pub use limiter::FailedLogins;
pub use tokens::{Caller, Role, Tokens, TokensError};
