//! MQTT over TLS for every client in this workspace (ingest, api, iot-sim, iot-bench).
//!
//! The rustls configuration is built here, with the `ring` provider passed explicitly, rather
//! than by rumqttc: files are read and checked once at start-up (a missing or empty CA file is
//! a configuration error with its path, not a connection error repeated forever), and no
//! process-wide crypto provider has to be installed.

use std::{
    io::BufReader,
    path::{Path, PathBuf},
    sync::Arc,
};

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

/// TLS settings of one MQTT client, from its `--mqtt-tls`, `--mqtt-ca-file`,
/// `--mqtt-client-cert` and `--mqtt-client-key` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Connect with TLS at all.
    pub enabled: bool,
    /// PEM file with the CA certificate(s) to trust; `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and key, for brokers that require one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("a client certificate needs both --mqtt-client-cert and --mqtt-client-key")]
    IncompleteClientAuth,
    #[error("--mqtt-ca-file/--mqtt-client-cert/--mqtt-client-key are set but --mqtt-tls is not")]
    FilesWithoutTls,
    #[error("no trusted root certificate: the system store is empty and no --mqtt-ca-file was given")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSettings {
    /// Checks the combination of flags (files without TLS would silently connect in plain text).
    pub fn validate(&self) -> Result<(), TlsError> {
        if !self.enabled && (self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()) {
            return Err(TlsError::FilesWithoutTls);
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(TlsError::IncompleteClientAuth);
        }
        Ok(())
    }

    /// The rustls client configuration, or `None` when TLS is off.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, TlsError> {
        self.validate()?;
        if !self.enabled {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
            }
            None => {
                // Certificates the system store cannot parse are skipped, as a browser would.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }

    /// The TLS transport for rumqttc (MQTT 3.1.1 or 5 options), or `None` when TLS is off.
    /// The broker's host name or IP address is what its certificate must name.
    pub fn transport(&self) -> Result<Option<Transport>, TlsError> {
        Ok(self.client_config()?.map(|config| Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config)))))
    }

    /// Switches MQTT 3.1.1 `options` to TLS when enabled.
    pub fn apply(&self, options: &mut MqttOptions) -> Result<(), TlsError> {
        if let Some(transport) = self.transport()? {
            options.set_transport(transport);
        }
        Ok(())
    }
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path).map(BufReader::new).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?
        .ok_or_else(|| TlsError::NoKey(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn off_by_default_and_files_need_tls() {
        assert!(TlsSettings::default().client_config().unwrap().is_none());
        let files_only = TlsSettings { ca_file: Some("ca.crt".into()), ..TlsSettings::default() };
        assert!(matches!(files_only.validate(), Err(TlsError::FilesWithoutTls)));
        let half = TlsSettings { enabled: true, client_cert: Some("c.crt".into()), ..TlsSettings::default() };
        assert!(matches!(half.validate(), Err(TlsError::IncompleteClientAuth)));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing =
            TlsSettings { enabled: true, ca_file: Some(dir.path().join("nope.crt")), ..TlsSettings::default() };
        assert!(matches!(missing.client_config(), Err(TlsError::Read { .. })));
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let empty = TlsSettings { enabled: true, ca_file: Some(empty), ..TlsSettings::default() };
        assert!(matches!(empty.client_config(), Err(TlsError::NoCertificate(_))));
    }
}
