//! What the continuity tests build their mailboxes from.

use super::identity::{Identity, Known};
use super::uidmap::Catalogue;

/// A message delivered through levee: named by its trace id, made from `name`.
pub fn known(uid: u32, name: &str) -> Known {
    Known {
        uid,
        identity: Identity {
            trace: Some(format!("L{name}.0011223344556677")),
            message_id: None,
            size: 100,
        },
        flags: Vec::new(),
    }
}

/// A mailbox at the primary with UIDVALIDITY 1111.
pub fn catalogue(messages: Vec<Known>, uidnext: u32) -> Catalogue {
    Catalogue {
        uidvalidity: 1111,
        uidnext,
        messages: messages.into_iter().map(|k| (k.uid, k)).collect(),
    }
}
