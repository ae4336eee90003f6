//! The CLI's side of the admin API (`levee status`, `switchover`, `failback`): one blocking
//! HTTPS request with the token from a file, the certificate checked against the system's
//! roots or a given CA file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

/// Longest a request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to reach the admin API.
#[derive(Debug)]
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// A request that got no JSON answer, or an answer other than 2xx.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The API said no: its status and `error` text.
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
}

impl AdminClient {
    /// `server` is `https://host:port` (or `http://` for a loopback listener with
    /// `tls = "none"`); the token is the first line of `token_file`; `identity` is a client
    /// certificate and its key (PEM files) for a listener that requires one.
    pub fn new(
        server: &str,
        token_file: &Path,
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        let setup = |m: String| ClientError::Setup(m);
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| setup(format!("reading {}: {e}", token_file.display())))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(setup(format!("{} holds no token", token_file.display())));
        }
        let mut tls = TlsConfig::builder();
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).map_err(|e| setup(format!("reading {}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| setup(format!("{}: not a PEM certificate: {e}", ca.display())))?;
            tls = tls.root_certs(RootCerts::Specific(Arc::new(vec![cert])));
        }
        if let Some((cert, key)) = identity {
            tls = tls.client_cert(Some(client_cert(cert, key)?));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build();
        Ok(AdminClient {
            agent: config.into(),
            base: server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        answer(&url, sent)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let sent = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body);
        answer(&url, sent)
    }
}

/// A certificate chain and its key from PEM files; the key's bytes never reach a message.
fn client_cert(cert: &Path, key: &Path) -> Result<ClientCert, ClientError> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| ClientError::Setup(format!("reading {}: {e}", path.display())))
    };
    let pem = read(cert)?;
    let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if chain.is_empty() {
        return Err(ClientError::Setup(format!(
            "{}: no PEM certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKey::from_pem(&read(key)?)
        .map_err(|_| ClientError::Setup(format!("{}: not a PEM private key", key.display())))?;
    Ok(ClientCert::new_with_certs(&chain, key))
}

fn answer(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, ClientError> {
    let mut response = sent.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        detail: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::Unreachable {
            url: url.to_owned(),
            detail: format!("reading the answer: {e}"),
        })?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if (200..300).contains(&status) {
        return json.ok_or(ClientError::Refused {
            status,
            message: "the answer is not JSON".into(),
        });
    }
    let message = json
        .as_ref()
        .and_then(|j| j["error"].as_str())
        .map_or_else(|| text.trim().to_owned(), str::to_owned);
    Err(ClientError::Refused { status, message })
}
