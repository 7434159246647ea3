//! TLS for `rediss://` connections (cargo feature `tls`): which roots to
//! trust, a client certificate for mutual TLS, and the name to verify.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fred::rustls::crypto::ring;
use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use fred::rustls::{ClientConfig, RootCertStore};
use fred::types::config::{HostMapping, TlsConfig, TlsConnector, TlsHostMapping};

use crate::policy::error::Error;

/// How a `rediss://` connection is secured: the certificate authorities the
/// server's certificate must chain to (the system's roots by default), an
/// optional client certificate (for servers with `tls-auth-clients yes`),
/// and the name the server's certificate must carry (the URL's host by
/// default).
///
/// Made with [`Tls::new`], used with
/// [`Builder::connect_tls`](crate::Builder::connect_tls). A plain
/// [`DistributedMutex::connect`](crate::DistributedMutex::connect) of a
/// `rediss://` URL uses `Tls::new()`. Files are read when connecting; a
/// missing or malformed file is an [`Error::Config`] naming it.
///
/// ```no_run
/// use distributed_mutex::{Builder, Tls};
///
/// # async fn demo() -> Result<(), distributed_mutex::Error> {
/// let tls = Tls::new()
///     .ca_file("/etc/redis/ca.pem")
///     .client_cert("/etc/app/client.pem", "/etc/app/client.key")
///     .server_name("redis.internal");
/// let mutex = Builder::connect_tls("rediss://10.0.0.5:6380", tls).await?.build()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Tls {
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

impl Tls {
    /// Trust the system's root certificates, no client certificate, verify
    /// the URL's host name.
    pub fn new() -> Self {
        Tls::default()
    }

    /// Trust the certificate authorities in this PEM file instead of the
    /// system's roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this certificate chain (PEM) and private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1) to the server, for mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it is not the
    /// URL's host (an IP address, or a load balancer's name). On Redis
    /// Cluster it applies to every node.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The fred TLS configuration these settings describe.
    pub(crate) fn config(&self) -> Result<TlsConfig, Error> {
        let roots = match &self.ca_file {
            Some(path) => roots_from(path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("TLS could not be set up: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(certs_from(cert)?, key_from(key)?)
                .map_err(|e| {
                    config_error(format!(
                        "the client certificate {} and key {} cannot be used: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        let hostnames = match &self.server_name {
            Some(name) => TlsHostMapping::Custom(Arc::new(FixedName(name.clone()))),
            None => TlsHostMapping::None,
        };
        Ok(TlsConfig {
            connector: TlsConnector::from(config),
            hostnames,
        })
    }

    /// The server name to verify, if set.
    pub(crate) fn name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Every cluster node is verified against the one configured name.
#[derive(Debug)]
struct FixedName(String);

impl HostMapping for FixedName {
    fn map(&self, _ip: &IpAddr, _default_host: &str) -> Option<String> {
        Some(self.0.clone())
    }
}

fn config_error(message: String) -> Error {
    Error::Config {
        message,
        source: None,
    }
}

fn certs_from(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let unreadable = |e: &dyn fmt::Display| {
        config_error(format!(
            "the certificate file {} cannot be read as PEM: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"it holds no certificate"));
    }
    Ok(certs)
}

fn key_from(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        config_error(format!(
            "the private key file {} cannot be read as PEM: {e}",
            path.display()
        ))
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from(path)? {
        roots.add(cert).map_err(|e| {
            config_error(format!(
                "the CA file {} holds a certificate that cannot be trusted: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, Error> {
    let found = fred::rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(config_error(format!(
            "no system root certificates could be loaded ({:?}); give a CA file with Tls::ca_file",
            found.errors
        )));
    }
    Ok(roots)
}
