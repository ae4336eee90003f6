//! What a hibernating session's client knows of its selected mailbox ([`View`]), and the
//! flag changes levee saw there lately ([`FlagLog`]): with both, levee tells the client
//! what its IMAP server would have told it in IDLE, without a connection to the server.
//! Pure: no IO.

use std::collections::VecDeque;

use roaring::RoaringBitmap;

/// Flag changes kept per followed mailbox; a session further behind is told every
/// message's flags instead.
const FLAG_LOG_LOOKS: usize = 64;

/// A set of UIDs: a compressed bitmap, a few bytes for a run of consecutive UIDs however
/// long (a client's INBOX of 100,000 messages costs far less than 4 bytes each).
pub type Uids = RoaringBitmap;

/// The messages the client knows, by the UIDs it knows them by: the client's message n is
/// the one with the n-th lowest UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    uids: Uids,
}

impl View {
    pub fn new(mut uids: Uids) -> View {
        uids.optimize();
        View { uids }
    }

    /// The client's number for the message it knows as `uid`.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        if !self.uids.contains(uid) {
            return None;
        }
        u32::try_from(self.uids.rank(uid)).ok()
    }

    /// How many messages the client knows.
    pub fn len(&self) -> u64 {
        self.uids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uids.is_empty()
    }

    /// Brings the view to `now` (the mailbox's messages as the client knows their UIDs, as
    /// far as UID `known_below`: a list taken before the client heard of newer mail) and
    /// returns what tells the client: an EXPUNGE for each message gone, highest number
    /// first (each leaves the numbers below it as they were), then EXISTS when mail came.
    /// Mail can only come after what the client knows (UIDs ascend); a message listed
    /// below the highest known UID that the client never saw is left out.
    pub fn update(&mut self, now: &Uids, known_below: u32) -> Vec<String> {
        let mut gone = self.uids.clone();
        gone.remove_range(known_below..);
        gone -= now;
        // Numbered as the client knows them before any is gone: highest first, each
        // EXPUNGE leaves the numbers below it as they were.
        let mut out: Vec<String> = gone
            .iter()
            .rev()
            .map(|uid| format!("* {} EXPUNGE\r\n", self.uids.rank(uid)))
            .collect();
        let mut came = now.clone();
        if let Some(highest) = self.uids.max() {
            came.remove_range(..=highest);
        }
        self.uids -= &gone;
        self.uids |= &came;
        self.uids.optimize();
        if !came.is_empty() {
            out.push(format!("* {} EXISTS\r\n", self.uids.len()));
        }
        out
    }
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

    fn uids(list: &[u32]) -> Uids {
        list.iter().copied().collect()
    }

    fn listed(view: &View) -> Vec<u32> {
        view.uids.iter().collect()
    }

    #[test]
    fn expunges_go_highest_first_then_new_mail() {
        let mut view = View::new(uids(&[10, 4, 7, 12]));
        assert_eq!(view.seq_of(7), Some(2));
        assert_eq!(view.seq_of(5), None);
        // 7 and 12 are gone, 13 and 15 came.
        assert_eq!(
            view.update(&uids(&[4, 10, 13, 15]), u32::MAX),
            ["* 4 EXPUNGE\r\n", "* 2 EXPUNGE\r\n", "* 4 EXISTS\r\n"]
        );
        assert_eq!(listed(&view), [4, 10, 13, 15]);
        // Nothing changed: nothing to say.
        assert!(view.update(&uids(&[4, 10, 13, 15]), u32::MAX).is_empty());
        // A message below the highest known one that the client never saw stays out.
        assert_eq!(
            view.update(&uids(&[4, 5, 10, 13, 15, 16]), u32::MAX),
            ["* 5 EXISTS\r\n"]
        );
        assert_eq!(listed(&view), [4, 10, 13, 15, 16]);
        // A list from before 15 and 16 came names only what it knew of.
        assert_eq!(view.update(&uids(&[4, 13]), 15), ["* 2 EXPUNGE\r\n"]);
        assert_eq!(listed(&view), [4, 13, 15, 16]);
        assert_eq!(
            view.update(&Uids::new(), u32::MAX),
            [
                "* 4 EXPUNGE\r\n",
                "* 3 EXPUNGE\r\n",
                "* 2 EXPUNGE\r\n",
                "* 1 EXPUNGE\r\n"
            ]
        );
        assert!(view.is_empty());
        // An empty view hears of every message as new.
        assert_eq!(view.update(&uids(&[3, 9]), u32::MAX), ["* 2 EXISTS\r\n"]);
        assert_eq!(view.seq_of(9), Some(2));
    }

    #[test]
    fn a_large_mailbox_is_numbered_across_chunks_and_stays_small() {
        // 200,000 messages with a few gaps: the UIDs span four 64K chunks of the bitmap.
        let all: Uids = (1..=200_000u32).filter(|u| u % 50_000 != 0).collect();
        let mut view = View::new(all.clone());
        assert_eq!(view.len(), 199_996);
        assert_eq!(view.seq_of(1), Some(1));
        assert_eq!(view.seq_of(50_000), None);
        assert_eq!(view.seq_of(50_001), Some(50_000));
        assert_eq!(view.seq_of(150_001), Some(149_998));
        assert!(
            view.uids.serialized_size() < 1000,
            "a run of UIDs costs {} bytes",
            view.uids.serialized_size()
        );
        // One message gone in the third chunk, two come after the last.
        let mut now = all;
        now.remove(140_000);
        now.insert(200_001);
        now.insert(200_002);
        assert_eq!(
            view.update(&now, u32::MAX),
            ["* 139998 EXPUNGE\r\n", "* 199997 EXISTS\r\n"]
        );
        assert_eq!(view.seq_of(140_001), Some(139_998));
        assert_eq!(view.seq_of(200_002), Some(199_997));
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
