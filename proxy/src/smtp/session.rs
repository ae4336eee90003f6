//! One client SMTP session: the command loop and the session-level commands.
//!
//! The session owns its upstream connection and its transaction; the envelope and DATA
//! handling live in [`super::transaction`], AUTH relaying in [`super::auth`]. The state is
//! explicit: `helo` says whether a greeting was exchanged, `tx` whether a transaction is
//! open, `upstream` whether the mail server is reachable for this session, and `backend`
//! which site's mail server that is (see [`super::route`]).

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{
    EXT_8BIT_MIME, EXT_AUTH, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EXT_START_TLS, EhloResponse, Error as ProtoError, Request,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{ConnError, Connection, Line};
use super::reply::{self, Reply};
use super::route;
use super::transaction::Transaction;
use super::upstream::{ClientIdentity, Upstream, UpstreamError};
use super::{ListenerInfo, SmtpShared};
use crate::failover::controller::Backend;
use crate::metrics as m;
use levee_config::{ListenerKind, TlsMode};
use levee_journal::ClientInfo;

/// What the caller must do when [`Session::serve`] returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Close,
    /// The client asked for STARTTLS and got 220: upgrade the stream, then serve again.
    StartTls,
}

/// State of one client session, kept across the STARTTLS upgrade.
#[derive(Debug)]
pub struct Session {
    pub(super) shared: Arc<SmtpShared>,
    pub(super) listener: ListenerInfo,
    pub(super) peer: SocketAddr,
    pub(super) helo: Option<String>,
    pub(super) tls: bool,
    pub(super) auth_user: Option<String>,
    pub(super) upstream: Option<Upstream>,
    /// The upstream connection being opened while the client is still greeting us.
    pub(super) pending: Option<tokio::task::JoinHandle<Result<Upstream, UpstreamError>>>,
    /// The site `upstream` (or `pending`) belongs to, or the one last tried.
    pub(super) backend: Backend,
    pub(super) tx: Option<Transaction>,
    errors: u32,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
        // A client that vanished between transactions leaves a reusable upstream session.
        if let Some(upstream) = self.upstream.take()
            && self.tx.is_none()
        {
            self.shared.upstreams.put(upstream);
        }
    }
}

impl Session {
    pub fn new(
        shared: Arc<SmtpShared>,
        listener: ListenerInfo,
        peer: SocketAddr,
        tls: bool,
    ) -> Self {
        let backend = shared.routes.active();
        Session {
            shared,
            listener,
            peer,
            helo: None,
            tls,
            auth_user: None,
            upstream: None,
            pending: None,
            backend,
            tx: None,
            errors: 0,
        }
    }

    /// Starts connecting to the upstream (greeting, EHLO, XCLIENT) in the background, so
    /// that the client's EHLO costs one upstream round trip instead of five.
    pub fn connect_upstream_early(&mut self) {
        let config = &self.shared.config;
        self.backend = self.shared.routes.active();
        let addr = self.shared.routes.addr(self.backend, self.listener.kind);
        let identity = ClientIdentity {
            addr: Some(self.peer),
            helo: None,
            login: None,
        };
        let (connect, reply) = (config.smtp.connect_timeout, config.smtp.upstream_timeout);
        let shared = self.shared.clone();
        self.pending = Some(tokio::spawn(async move {
            let name = &shared.config.smtp.hostname;
            (shared.upstreams)
                .checkout(addr, connect, reply, name, &identity)
                .await
        }));
    }

    /// The greeting that opens the session (and nothing after STARTTLS).
    pub fn greeting(&self) -> Reply {
        Reply::owned(
            220,
            [0, 0, 0],
            format!("{} ESMTP levee", self.shared.config.smtp.hostname),
        )
    }

    /// Runs the command loop until the session ends or asks for a TLS upgrade.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Next {
        let limits = &self.shared.config.smtp;
        let (max_line, idle) = (limits.max_line_length, limits.command_timeout);
        loop {
            let shutdown = self.shared.shutdown.clone();
            let line = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    conn.reply(&reply::SHUTDOWN);
                    let _ = conn.flush().await;
                    return Next::Close;
                }
                line = conn.read_line(max_line, idle) => line,
            };
            let outcome = match line {
                Ok(Line::Complete(line)) => self.dispatch(conn, &line).await,
                Ok(Line::TooLong) => {
                    conn.reply(&reply::LINE_TOO_LONG);
                    Ok(self.count_error(conn))
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(next)) => {
                    let _ = conn.flush().await;
                    return next;
                }
                Err(ConnError::Timeout(after)) => {
                    tracing::info!(?after, "client timed out");
                    conn.reply(&reply::TIMEOUT);
                    let _ = conn.flush().await;
                    return Next::Close;
                }
                Err(err) => {
                    tracing::debug!(%err, "session ended");
                    return Next::Close;
                }
            }
        }
    }

    /// Handles one command line. `Ok(Some(_))` ends the loop.
    async fn dispatch<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        line: &[u8],
    ) -> Result<Option<Next>, ConnError> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(err) => {
                conn.reply(&syntax_reply(&err));
                return Ok(self.count_error(conn));
            }
        };
        tracing::trace!(command = request.name(), "command");
        match request {
            Request::Ehlo { host } => self.hello(conn, host.into_owned(), true).await,
            Request::Helo { host } => self.hello(conn, host.into_owned(), false).await,
            Request::StartTls => return Ok(self.start_tls(conn)),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let initial = initial_response.into_owned();
                self.auth(conn, line, mechanism, &initial).await?;
            }
            Request::Mail { from } => self.mail(conn, line, from.address.as_ref()).await,
            Request::Rcpt { to } => self.rcpt(conn, line, to.address.as_ref()).await,
            Request::Data => self.data(conn).await?,
            Request::Rset => {
                self.reset_transaction().await;
                conn.reply(&reply::OK);
            }
            Request::Noop { .. } => conn.reply(&reply::OK),
            Request::Quit => {
                conn.reply(&reply::BYE);
                // The client's 221 must not wait for the upstream: it goes out first, then
                // the upstream session waits for the next client or is closed politely in
                // the background.
                let _ = conn.flush().await;
                self.release_upstream();
                return Ok(Some(Next::Close));
            }
            Request::Vrfy { .. } => conn.reply(&reply::VRFY),
            Request::Help { .. } => conn.reply(&reply::HELP),
            _ => {
                conn.reply(&reply::NOT_IMPLEMENTED);
                return Ok(self.count_error(conn));
            }
        }
        Ok(None)
    }

    /// Counts a protocol error; past the limit the session ends with 421.
    pub(super) fn count_error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Option<Next> {
        self.errors += 1;
        metrics::counter!(m::SMTP_PROTOCOL_ERRORS).increment(1);
        if self.errors >= self.shared.config.smtp.max_errors {
            conn.reply(&reply::TOO_MANY_ERRORS);
            return Some(Next::Close);
        }
        None
    }

    async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        host: String,
        extended: bool,
    ) {
        self.reset_transaction().await;
        self.upstream_hello(&host).await;
        self.helo = Some(host);
        if self.upstream.is_none() && self.listener.kind == ListenerKind::Submission {
            // Without the mail server nobody can check credentials: ask the client to
            // come back rather than offering a session that can only fail.
            conn.reply(&reply::SUBMISSION_DOWN);
            return;
        }
        let hostname = &self.shared.config.smtp.hostname;
        if !extended {
            conn.reply(&Reply::owned(250, [0, 0, 0], hostname.clone()));
            return;
        }
        let mut ehlo = EhloResponse::new(hostname.as_str());
        ehlo.capabilities =
            EXT_PIPELINING | EXT_SIZE | EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_ENHANCED_STATUS_CODES;
        ehlo.size = usize::try_from(self.shared.config.smtp.max_message_size).unwrap_or(0);
        if self.offers_starttls() {
            ehlo.capabilities |= EXT_START_TLS;
        }
        if let Some(mechanisms) = self.offered_auth() {
            ehlo.capabilities |= EXT_AUTH;
            ehlo.auth_mechanisms = mechanisms;
        }
        let mut out = Vec::with_capacity(256);
        let _ = ehlo.write(&mut out);
        conn.reply_raw(&out);
    }

    fn offers_starttls(&self) -> bool {
        !self.tls && self.listener.tls == TlsMode::Starttls && self.shared.tls.is_some()
    }

    /// AUTH mechanisms to announce: the upstream's, once the channel is private enough.
    pub(super) fn offered_auth(&self) -> Option<u64> {
        let upstream = self.upstream.as_ref()?;
        let private = self.tls || self.shared.config.smtp.allow_plaintext_auth;
        let mechanisms = upstream.capabilities().auth_mechanisms;
        (private && self.auth_user.is_none() && mechanisms != 0).then_some(mechanisms)
    }

    fn start_tls<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Option<Next> {
        if !self.offers_starttls() {
            conn.reply(&reply::NO_TLS);
            return self.count_error(conn);
        }
        if !conn.buffered().is_empty() {
            // Anything after STARTTLS in the same packet was sent in plaintext and could
            // have been injected (CVE-2011-0411): refuse to carry it into the TLS session.
            tracing::warn!("plaintext pipelined after STARTTLS; closing");
            conn.reply(&reply::PIPELINED_TLS);
            return Some(Next::Close);
        }
        conn.reply(&reply::READY_TLS);
        Some(Next::StartTls)
    }

    /// After a successful TLS handshake: RFC 3207 says forget everything learnt before.
    pub fn upgraded(&mut self) {
        self.tls = true;
        self.helo = None;
        self.auth_user = None;
        self.tx = None;
    }

    /// Makes sure an upstream session to the active backend exists and has heard the
    /// client's HELO name.
    async fn upstream_hello(&mut self, host: &str) {
        if self.shared.routes.active() != self.backend {
            self.leave_backend();
        }
        if self.upstream.is_none() {
            if self.pending.is_none() {
                self.connect_upstream_early();
            }
            let connected = match self.pending.take() {
                Some(pending) => pending
                    .await
                    .unwrap_or_else(|join| Err(UpstreamError::Task(join.to_string()))),
                None => return,
            };
            match connected {
                Ok(upstream) => self.upstream = Some(upstream),
                Err(err) => {
                    route::note_failure(&self.shared, self.backend, &err);
                    tracing::warn!(%err, backend = ?self.backend, "upstream unavailable");
                    return;
                }
            }
        }
        if let Some(upstream) = self.upstream.as_mut()
            && let Err(err) = upstream.hello(host).await
        {
            route::note_failure(&self.shared, self.backend, &err);
            tracing::warn!(%err, "upstream refused EHLO");
            self.upstream = None;
        }
    }

    /// Forwards one client line upstream. On an upstream failure the connection is
    /// dropped (the session goes on without it) and `None` is returned.
    pub(super) async fn forward(&mut self, line: &[u8]) -> Option<Reply> {
        let upstream = self.upstream.as_mut()?;
        match upstream.command(line).await {
            Ok(reply) => Some(reply),
            Err(err) => {
                route::note_failure(&self.shared, self.backend, &err);
                tracing::warn!(%err, "upstream failed mid-session");
                self.upstream = None;
                None
            }
        }
    }

    /// Gives the upstream session back to the pool, or closes it when it may not be
    /// reused.
    fn release_upstream(&mut self) {
        let Some(upstream) = self.upstream.take() else {
            return;
        };
        if self.tx.is_none() && upstream.reusable(super::pool::MAX_USES) {
            self.shared.upstreams.put(upstream);
        } else {
            tokio::spawn(upstream.quit());
        }
    }

    /// What the journal records of this client.
    pub(super) fn client_info(&self) -> ClientInfo {
        ClientInfo {
            addr: Some(self.peer.to_string()),
            helo: self.helo.clone(),
            authenticated_user: self.auth_user.clone(),
            listener: self.listener.name.clone(),
            tls: self.tls,
        }
    }

    /// Ends the open transaction on both sides.
    pub(super) async fn reset_transaction(&mut self) {
        if self.tx.take().is_some() && self.upstream.is_some() {
            let _ = self.forward(b"RSET\r\n").await;
        }
    }
}

fn syntax_reply(err: &ProtoError) -> Reply {
    match err {
        ProtoError::UnknownCommand => reply::SYNTAX,
        ProtoError::SyntaxError { syntax } => {
            Reply::owned(501, [5, 5, 4], format!("Syntax: {syntax}"))
        }
        ProtoError::InvalidSenderAddress => Reply::own(501, [5, 1, 7], "Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => {
            Reply::own(501, [5, 1, 3], "Bad recipient address syntax")
        }
        ProtoError::InvalidParameter { param } => {
            Reply::owned(501, [5, 5, 4], format!("Invalid parameter {param:?}"))
        }
        ProtoError::UnsupportedParameter { param } => Reply::owned(
            504,
            [5, 5, 4],
            format!(
                "Unsupported parameter {:?}",
                param.chars().take(40).collect::<String>()
            ),
        ),
        _ => reply::SYNTAX,
    }
}
