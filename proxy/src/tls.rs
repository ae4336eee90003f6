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

/// Builds an acceptor from PEM files (the same loader as the replication link's).
pub fn acceptor_from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let config = levee_replica::tls::server_config(cert, key, None)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor that also requires a client certificate signed by the CA in `client_ca`.
pub fn acceptor_requiring_clients(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<TlsAcceptor, TlsError> {
    let config = levee_replica::tls::server_config(cert, key, Some(client_ca))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
