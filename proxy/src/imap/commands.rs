//! The client's side of a session: what the framer found in the client's bytes, and each
//! command on its way upstream (refused here when levee must not pass it on, recorded in the
//! session state, kept for sending again when it is read-only, translated on the replica).

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;

use super::framing::{ClientEvent, ClientMessage};
use super::modseq;
use super::pump::Pump;
use super::search_return::{self, Split};
use super::session::{Next, Session, tag_of};

impl Session {
    /// Handles what the framer found in the client's bytes.
    pub(super) fn take_client_messages(&mut self, pump: &mut Pump) {
        // While levee lists a mailbox just selected, the client's next commands wait: their
        // message numbers can only be mapped once the listing is in.
        while !pump.closing && self.listing.is_none() {
            let Some(event) = self.framer.next_event() else {
                return;
            };
            self.client_event(pump, event);
        }
    }

    /// Acts on one of the client's messages or the framer's findings.
    pub(super) fn client_event(&mut self, pump: &mut Pump, event: ClientEvent) {
        match event {
            ClientEvent::Message(message) => self.client_message(pump, message),
            ClientEvent::GoAhead => pump.say(b"+ Ready for literal data\r\n"),
            ClientEvent::LiteralRefused { tag, length } => {
                let max = self.shared.config.imap.max_literal;
                pump.say(
                    format!(
                        "{} NO [TOOBIG] A literal of {length} bytes is over the limit of {max}\r\n",
                        tag.as_deref().unwrap_or("*")
                    )
                    .as_bytes(),
                );
            }
            ClientEvent::TooBig { tag } => {
                pump.say(
                    format!(
                        "{} BAD [TOOBIG] Command too large\r\n",
                        tag.as_deref().unwrap_or("*")
                    )
                    .as_bytes(),
                );
            }
            ClientEvent::LineTooLong => {
                metrics::counter!(crate::metrics::IMAP_PROTOCOL_ERRORS).increment(1);
                pump.say(b"* BYE Command line too long\r\n");
                pump.closing = true;
            }
        }
    }

    pub(super) fn client_message(&mut self, pump: &mut Pump, message: ClientMessage) {
        // Inside IDLE or an AUTHENTICATE exchange the client sends data lines, not
        // commands: they go upstream as they are.
        if self.state.idling.is_some() {
            self.state.idle_done_sent = true;
            self.send_upstream(message);
            return;
        }
        if self.state.auth_continues {
            self.state.auth_line_sent(&message.bytes);
            self.send_upstream(message);
            return;
        }
        let decoded = CommandCodec::default().decode(&message.bytes);
        let command = match decoded {
            Ok((b"", command)) => command,
            _ => {
                if let Some(split) = search_return::split(&message) {
                    self.search_with_options(message, split);
                    return;
                }
                // Not levee's to judge: the server answers it (BAD, most likely).
                let tag = tag_of(&message.bytes);
                self.state.opaque_sent(tag);
                self.send_upstream(message);
                return;
            }
        };
        let tag = command.tag.inner().to_string();
        match &command.body {
            CommandBody::StartTLS => {
                if self.tls.encrypted || !self.tls.available {
                    pump.say(format!("{tag} BAD STARTTLS is not available now\r\n").as_bytes());
                } else if self.framer.next_event().is_some()
                    || self.framer.mid_message()
                    || self.state.in_flight() > 0
                {
                    // Bytes pipelined behind STARTTLS would cross into the TLS session.
                    metrics::counter!(crate::metrics::IMAP_PROTOCOL_ERRORS).increment(1);
                    pump.say(b"* BYE Commands pipelined after STARTTLS\r\n");
                    pump.closing = true;
                } else {
                    pump.say(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes());
                    pump.closing = true;
                    pump.next = Next::StartTls;
                }
                return;
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
                if !self.tls.login_allowed() =>
            {
                pump.say(
                    format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n")
                        .as_bytes(),
                );
                return;
            }
            CommandBody::Authenticate { mechanism, .. }
                if !mechanism.as_ref().eq_ignore_ascii_case("PLAIN") =>
            {
                pump.say(
                    format!("{tag} NO [CANNOT] Only AUTHENTICATE PLAIN is available\r\n")
                        .as_bytes(),
                );
                return;
            }
            CommandBody::Compress { .. } => {
                pump.say(format!("{tag} NO [CANNOT] COMPRESS is not available\r\n").as_bytes());
                return;
            }
            CommandBody::Select { mailbox, .. } | CommandBody::Examine { mailbox, .. } => {
                self.translation = None;
                self.seqmap = None;
                let name = super::identity::mailbox_name(mailbox);
                if self.translates(&name) {
                    self.translate_next = Some(name);
                }
            }
            _ => {}
        }
        self.state.command_sent(&command);
        if super::changes::replayable(&command) {
            self.replay.push((tag, message.clone()));
        }
        if self.translate_next.is_some() && super::rewrite::has_qresync(&command) {
            // Its UIDVALIDITY and known UIDs are the client's: they go out as the server's
            // once the translation is in (`Session::select_translated`).
            self.hold_select(message);
            return;
        }
        let mut command = command;
        let shifted = modseq::command(&mut command, self.modseq);
        let message = match self.translated(&command) {
            Some(translated) => translated,
            None if shifted => super::rewrite::encode(&command),
            None => message,
        };
        self.send_upstream(message);
        if self.translate_next.is_some() {
            self.request_listing();
        }
    }

    /// A SEARCH with RETURN options: the rest is read and translated as a plain SEARCH,
    /// with ALL asked for as well where MIN and MAX cannot be mapped one by one.
    fn search_with_options(&mut self, message: ClientMessage, split: Split) {
        let decoded = CommandCodec::default().decode(&split.plain.bytes);
        let Ok((b"", mut command)) = decoded else {
            self.state.opaque_sent(tag_of(&message.bytes));
            self.send_upstream(message);
            return;
        };
        let uid = matches!(command.body, CommandBody::Search { uid: true, .. });
        let reordered = match uid {
            false => self.seqmap.is_some(),
            true => self.translation.as_ref().is_some_and(|t| !t.ordered),
        };
        let tag = command.tag.inner().to_string();
        let mut options = split.options;
        if reordered && let Some(with_all) = search_return::with_all(&options) {
            options = with_all;
            self.esearch_drop_all = Some(tag.clone());
        }
        self.state.command_sent(&command);
        if super::changes::replayable(&command) {
            self.replay.push((tag, message));
        }
        let shifted = modseq::command(&mut command, self.modseq);
        let encoded = match self.translated(&command) {
            Some(translated) => translated,
            None if shifted => super::rewrite::encode(&command),
            None => split.plain.clone(),
        };
        self.send_upstream(search_return::join(encoded, &options));
    }
}
