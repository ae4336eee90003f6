//! Client-facing TLS: the rustls server configuration from PEM files, and a self-signed
//! certificate for the demo and tests.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// Why TLS material could not be used. The key's content never appears in the message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Material(#[from] levee_replica::tls::TlsError),
    #[error("tls: cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("tls: cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

pub use levee_replica::tls::CertSource;

/// An acceptor presenting what `source` holds at each handshake, requiring a client
/// certificate signed by a CA in `client_ca` when one is given.
pub fn acceptor_from(
    source: Arc<CertSource>,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let config = levee_replica::tls::server_config_from(source, client_ca)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads the certificate and key files again on every SIGHUP until `shutdown`: new
/// handshakes (clients and the admin API) present the new certificate, sessions already
/// up go on undisturbed. Files that do not load leave the previous certificate in place.
pub async fn reload_on_hangup(
    source: Arc<CertSource>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch for SIGHUP; the TLS certificate will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hangup.recv() => {
                if got.is_none() {
                    return;
                }
                let cert = source.cert_path().display().to_string();
                match source.reload() {
                    Ok(()) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "ok").increment(1);
                        tracing::info!(%cert, "TLS certificate reloaded");
                    }
                    Err(error) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => "failed")
                            .increment(1);
                        tracing::error!(%cert, %error, "TLS certificate not reloaded; the previous one stays in use");
                    }
                }
            }
        }
    }
}

/// Builds an acceptor from PEM files (the same loader as the replication link's).
pub fn acceptor_from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    acceptor_from(CertSource::load(cert, key)?, None)
}

/// Writes a fresh self-signed certificate and key for `names` as PEM files into `dir`,
/// returning their paths.
pub fn write_self_signed(
    dir: &Path,
    names: &[&str],
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let write = |path: &Path, text: String| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // The key is a secret: owner-only from the moment the file exists.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|source| TlsError::Write {
                path: path.display().to_string(),
                source,
            })
    };
    write(&cert_path, certified.cert.pem())?;
    write(&key_path, certified.signing_key.serialize_pem())?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_builds_an_acceptor() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path(), &["localhost"]).unwrap();
        acceptor_from_files(&cert, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }

    #[test]
    fn a_reload_presents_the_new_certificate_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path(), &["localhost"]).unwrap();
        let source = CertSource::load(&cert, &key).unwrap();
        let first = source.certificate();
        write_self_signed(dir.path(), &["localhost"]).unwrap();
        source.reload().unwrap();
        let second = source.certificate();
        assert_ne!(first, second, "the reload kept the old certificate");
        assert_eq!(second, levee_replica::tls::load_certs(&cert).unwrap()[0]);

        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
        assert!(source.reload().is_err());
        assert_eq!(source.certificate(), second, "a failed reload changed it");
    }

    #[test]
    fn swapped_files_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path(), &["localhost"]).unwrap();
        match acceptor_from_files(&key, &cert) {
            Err(TlsError::Material(levee_replica::tls::TlsError::NoCertificate { .. })) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a key file was accepted as a certificate"),
        }
    }
}
