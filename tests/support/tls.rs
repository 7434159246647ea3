//! A private `redis-server` that also listens with TLS, and the certificates
//! for it, made at test time with the `openssl` command: a test CA, a server
//! certificate for `localhost` and `127.0.0.1` signed by it, a client
//! certificate signed by it, and a second CA that signed nothing the server
//! presents.
//!
//! The server keeps its plain port for the fixture's probes and the tests'
//! raw reads (`server.cli(..)`); the TLS port speaks only TLS.

use std::path::PathBuf;
use std::process::Command;

use super::{free_port, RedisServer};

/// Certificates and keys in a temporary directory (removed on drop).
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Makes the two CAs, the server's and the client's certificates.
    pub fn make() -> Certs {
        let dir = super::unique_temp_dir();
        let certs = Certs { dir };
        certs.ca("ca", "distributed-mutex test CA");
        certs.ca("other-ca", "an unrelated CA");
        certs.leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs.leaf("client", "locker", "extendedKeyUsage=clientAuth\n");
        certs
    }

    /// `<dir>/<name>` (e.g. `ca.pem`, `client.key`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self, name: &str, subject: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).expect("write extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("the `openssl` command is needed for the TLS tests: {e}"));
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server with a plain port and a TLS port, and the certificates.
pub struct TlsServer {
    pub server: RedisServer,
    pub tls_port: u16,
    pub certs: Certs,
}

impl TlsServer {
    /// Starts a server whose TLS port presents `server.pem`; with
    /// `client_auth`, clients must present a certificate signed by `ca.pem`.
    pub fn start(client_auth: bool) -> TlsServer {
        let certs = Certs::make();
        let tls_port = free_port();
        let path = |name: &str| certs.path(name).display().to_string();
        let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
        let tls_port_arg = tls_port.to_string();
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port_arg,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            if client_auth { "yes" } else { "no" },
        ]);
        TlsServer {
            server,
            tls_port,
            certs,
        }
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// A certificate or key file of this server's set.
    pub fn file(&self, name: &str) -> PathBuf {
        self.certs.path(name)
    }
}
