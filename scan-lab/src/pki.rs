//! Test certificates (rcgen) and basic-auth hashes for the TLS tests: a CA, server
//! certificates for 127.0.0.1/localhost and a client certificate, written as PEM files.
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and the certificates it signed, as files in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            issuer,
        })
    }

    fn issue(&self, file: &str, sans: &[&str], purpose: ExtendedKeyUsagePurpose) -> Result<Issued> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        Ok(issued)
    }

    /// A server certificate for 127.0.0.1, ::1 and localhost.
    pub fn server(&self, file: &str) -> Result<Issued> {
        self.issue(
            file,
            &["127.0.0.1", "::1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with the DNS name `san`.
    pub fn client(&self, file: &str, san: &str) -> Result<Issued> {
        self.issue(file, &[san], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A bcrypt hash of `password` (low cost: tests only).
pub fn bcrypt_hash(password: &str) -> Result<String> {
    Ok(bcrypt::hash(password, 4)?)
}
