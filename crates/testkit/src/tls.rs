//! Certificates for TLS tests, made with the `openssl` command: a private CA, server
//! certificates for 127.0.0.1 signed by it, and client certificates (CN = the user name).
//! Everything lives in a folder the caller owns (a temp dir).

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, both PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A private certificate authority in a folder.
#[derive(Debug, Clone)]
pub struct TestCa {
    dir: PathBuf,
    /// The CA certificate (PEM): what clients are told to trust.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian package openssl)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TestCa {
    /// A new CA (EC P-256, valid 2 days) named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let subject = format!("/CN={name}");
        openssl(
            &[
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
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                path_str(&key)?,
                "-out",
                path_str(&cert)?,
            ],
            dir,
        )?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cert,
            key,
        })
    }

    /// A server certificate for `common_name` with the given subject alternative names
    /// (e.g. `IP:127.0.0.1`, `DNS:localhost`), signed by this CA.
    pub fn server(&self, common_name: &str, alt_names: &[&str]) -> Result<CertPair> {
        self.issue(
            common_name,
            &format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                alt_names.join(",")
            ),
        )
    }

    /// A client certificate whose CN is `user` (PostgreSQL's `cert` authentication maps the
    /// CN to the role), signed by this CA.
    pub fn client(&self, user: &str) -> Result<CertPair> {
        self.issue(
            user,
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
    }

    fn issue(&self, common_name: &str, extensions: &str) -> Result<CertPair> {
        let stem = crate::unique("cert");
        let pair = CertPair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        let (csr, ext) = (
            self.dir.join(format!("{stem}.csr")),
            self.dir.join(format!("{stem}.ext")),
        );
        std::fs::write(&ext, extensions)?;
        let subject = format!("/CN={common_name}");
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &subject,
                "-keyout",
                path_str(&pair.key)?,
                "-out",
                path_str(&csr)?,
            ],
            &self.dir,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                path_str(&csr)?,
                "-CA",
                path_str(&self.cert)?,
                "-CAkey",
                path_str(&self.key)?,
                "-set_serial",
                &format!("0x{}", uuid::Uuid::new_v4().simple()),
                "-days",
                "2",
                "-extfile",
                path_str(&ext)?,
                "-out",
                path_str(&pair.cert)?,
            ],
            &self.dir,
        )?;
        Ok(pair)
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
