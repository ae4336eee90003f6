//! What a hibernating session's client knows of its selected mailbox ([`View`]), and the
//! flag changes levee saw there lately ([`FlagLog`]): with both, levee tells the client
//! what its IMAP server would have told it in IDLE, without a connection to the server.
//! Pure: no IO.

use std::collections::VecDeque;

/// Flag changes kept per followed mailbox; a session further behind is told every
/// message's flags instead.
const FLAG_LOG_LOOKS: usize = 64;

/// The messages the client knows, by the UIDs it knows them by, ascending: the client's
/// message n is the n-th.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    uids: Vec<u32>,
}

impl View {
    pub fn new(uids: Vec<u32>) -> View {
        View { uids: sorted(uids) }
    }

    /// The client's number for the message it knows as `uid`.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        let at = self.uids.binary_search(&uid).ok()?;
        u32::try_from(at + 1).ok()
    }

    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    /// Brings the view to `now` (the mailbox's messages as the client knows their UIDs,
    /// ascending, as far as UID `known_below`: a list taken before the client heard of
    /// newer mail) and returns what tells the client: an EXPUNGE for each message gone,
    /// highest number first (each leaves the numbers below it as they were), then EXISTS
    /// when mail came. Mail can only come after what the client knows (UIDs ascend); a
    /// message listed below the highest known UID that the client never saw is left out.
    pub fn update(&mut self, now: &[u32], known_below: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(now.len());
        for (at, uid) in self.uids.iter().enumerate().rev() {
            if *uid >= known_below || now.binary_search(uid).is_ok() {
                kept.push(*uid);
            } else {
                out.push(format!("* {} EXPUNGE\r\n", at + 1));
            }
        }
        kept.reverse();
        let highest = self.uids.last().copied().unwrap_or(0);
        let came: Vec<u32> = now.iter().copied().filter(|&u| u > highest).collect();
        kept.extend_from_slice(&came);
        self.uids = kept;
        if !came.is_empty() {
            out.push(format!("* {} EXISTS\r\n", self.uids.len()));
        }
        out
    }
}

/// `uids` ascending, each once.
pub fn sorted(mut uids: Vec<u32>) -> Vec<u32> {
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Messages' flags, by the server's UIDs.
pub type FlagChanges = Vec<(u32, Vec<String>)>;

/// The flag changes levee's follower saw at its last looks at a mailbox, by the server's
/// UIDs, each look under the version it made.
#[derive(Debug, Default)]
pub struct FlagLog {
    version: u64,
    looks: VecDeque<(u64, FlagChanges)>,
}

impl FlagLog {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A look changed the mailbox (`flags`: its flag changes, maybe none); the new version.
    pub fn record(&mut self, flags: FlagChanges) -> u64 {
        self.version += 1;
        if !flags.is_empty() {
            self.looks.push_back((self.version, flags));
            if self.looks.len() > FLAG_LOG_LOOKS {
                self.looks.pop_front();
            }
        }
        self.version
    }

    /// The flag changes after version `seen`, the latest for each message last; `None`
    /// when some of them are no longer kept.
    pub fn since(&self, seen: u64) -> Option<FlagChanges> {
        let dropped = self.looks.front().map_or(self.version, |(v, _)| v - 1);
        if seen < dropped && self.looks.len() == FLAG_LOG_LOOKS {
            return None;
        }
        Some(
            self.looks
                .iter()
                .filter(|(v, _)| *v > seen)
                .flat_map(|(_, flags)| flags.iter().cloned())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expunges_go_highest_first_then_new_mail() {
        let mut view = View::new(vec![10, 4, 7, 12]);
        assert_eq!(view.seq_of(7), Some(2));
        assert_eq!(view.seq_of(5), None);
        // 7 and 12 are gone, 13 and 15 came.
        assert_eq!(
            view.update(&[4, 10, 13, 15], u32::MAX),
            ["* 4 EXPUNGE\r\n", "* 2 EXPUNGE\r\n", "* 4 EXISTS\r\n"]
        );
        assert_eq!(view.uids(), [4, 10, 13, 15]);
        // Nothing changed: nothing to say.
        assert!(view.update(&[4, 10, 13, 15], u32::MAX).is_empty());
        // A message below the highest known one that the client never saw stays out.
        assert_eq!(
            view.update(&[4, 5, 10, 13, 15, 16], u32::MAX),
            ["* 5 EXISTS\r\n"]
        );
        assert_eq!(view.uids(), [4, 10, 13, 15, 16]);
        // A list from before 15 and 16 came names only what it knew of.
        assert_eq!(view.update(&[4, 13], 15), ["* 2 EXPUNGE\r\n"]);
        assert_eq!(view.uids(), [4, 13, 15, 16]);
        assert_eq!(view.update(&[], u32::MAX).len(), 4);
        assert!(view.uids().is_empty());
    }

    #[test]
    fn flag_changes_are_read_since_a_version() {
        let mut log = FlagLog::default();
        let first = log.record(vec![(3, vec!["\\Seen".into()])]);
        let second = log.record(Vec::new());
        log.record(vec![(3, vec![]), (4, vec!["\\Flagged".into()])]);
        assert_eq!(log.since(0).unwrap().len(), 3);
        assert_eq!(
            log.since(second).unwrap(),
            [(3, vec![]), (4, vec!["\\Flagged".to_string()])]
        );
        assert_eq!(log.since(first).unwrap().len(), 2);
        assert!(log.since(log.version()).unwrap().is_empty());
    }

    #[test]
    fn a_session_too_far_behind_is_told_so() {
        let mut log = FlagLog::default();
        for n in 0..(FLAG_LOG_LOOKS as u32 + 5) {
            log.record(vec![(n, Vec::new())]);
        }
        assert_eq!(log.since(0), None);
        assert_eq!(log.since(4), None);
        assert_eq!(log.since(5).map(|f| f.len()), Some(FLAG_LOG_LOOKS));
        assert_eq!(log.since(log.version()), Some(Vec::new()));
    }
}
