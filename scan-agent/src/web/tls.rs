//! `--web.config.file`: the exporter-toolkit web configuration (TLS, client
//! certificates, basic auth, response headers), mapped onto rustls and bcrypt.
//!
//! The file is the one Prometheus exporters share
//! (<https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>);
//! only its mapping is written here. It is re-read when it, or a certificate, key or CA
//! file it names, changes (checked on every new connection), so a rotated certificate or
//! a changed password applies to the next connection without a restart. A new version
//! that is invalid is refused with a log line naming the key; the last good one stays.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use axum::http::{HeaderName, HeaderValue};
use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme, SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::WebPkiSupportedAlgorithms,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use serde::Deserialize;

use super::auth::Users;

/// Largest web config file, certificate, key or CA file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// An invalid web config: the file, the key at fault and what to do.
#[derive(Debug, thiserror::Error)]
#[error("web config file {path:?}: {key}: {message}")]
pub struct WebConfigError {
    pub path: PathBuf,
    pub key: String,
    pub message: String,
}

/// The file as written (exporter-toolkit's keys).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    // exporter-toolkit keys for Go's TLS stack: refused with the reason.
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; the agent speaks HTTP/1.1 only.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Response headers exporter-toolkit allows in `http_server_config.headers`.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// exporter-toolkit's client authentication policies (Go's `tls.ClientAuthType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    const ALL: [(&'static str, ClientAuth); 5] = [
        ("NoClientCert", Self::NoClientCert),
        ("RequestClientCert", Self::RequestClientCert),
        ("RequireAnyClientCert", Self::RequireAnyClientCert),
        ("VerifyClientCertIfGiven", Self::VerifyClientCertIfGiven),
        (
            "RequireAndVerifyClientCert",
            Self::RequireAndVerifyClientCert,
        ),
    ];

    fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

/// One loaded, valid web configuration.
pub struct WebConfig {
    /// TLS settings; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// Basic-auth users; empty means no authentication.
    pub users: Arc<Users>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebConfig {
    /// No file: plain HTTP, no authentication, no extra headers.
    pub fn plain() -> Self {
        Self {
            tls: None,
            users: Arc::default(),
            headers: Vec::new(),
        }
    }
}

/// A file's identity for change detection: modification time, size and inode (a
/// certificate replaced by rename changes the inode even within one second).
type Stamp = Option<(i64, i64, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

/// The web config file and what was loaded from it, re-read on change.
pub struct WebConfigSource {
    path: Option<PathBuf>,
    current: ArcSwap<WebConfig>,
    /// The files of the last load attempt with their stamps then.
    watched: Mutex<Vec<(PathBuf, Stamp)>>,
}

impl WebConfigSource {
    /// Loads `path` (or the plain configuration without one); an invalid file is an
    /// error naming the key and the fix.
    pub fn new(path: Option<PathBuf>) -> Result<Self, WebConfigError> {
        let (config, watched) = match &path {
            None => (WebConfig::plain(), Vec::new()),
            Some(path) => {
                let mut files = Vec::new();
                let config = load(path, &mut files)?;
                (config, stamped(files))
            }
        };
        Ok(Self {
            path,
            current: ArcSwap::from_pointee(config),
            watched: Mutex::new(watched),
        })
    }

    /// The configuration for a new connection: re-read first if a watched file
    /// changed; when the new version is invalid, the last good one, with a log line.
    pub fn current(&self) -> Arc<WebConfig> {
        if let Some(path) = &self.path {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            if watched.iter().any(|(file, was)| stamp(file) != *was) {
                let mut files = Vec::new();
                match load(path, &mut files) {
                    Ok(config) => {
                        log::info!("web config file {path:?} re-read: the new version applies");
                        self.current.store(Arc::new(config));
                    }
                    Err(e) => log::error!("{e}; the last good version stays in force"),
                }
                // Also after a failure: retried only when something changes again.
                files.extend(watched.iter().map(|(f, _)| f.clone()));
                files.sort();
                files.dedup();
                *watched = stamped(files);
            }
        }
        self.current.load_full()
    }
}

fn stamped(files: Vec<PathBuf>) -> Vec<(PathBuf, Stamp)> {
    files
        .into_iter()
        .map(|f| {
            let s = stamp(&f);
            (f, s)
        })
        .collect()
}

/// Reads and checks the file; `files` receives every path it depends on (the file
/// itself first), also when it is invalid.
pub fn load(path: &Path, files: &mut Vec<PathBuf>) -> Result<WebConfig, WebConfigError> {
    files.push(path.to_path_buf());
    let err = |key: &str, message: String| WebConfigError {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let bytes = crate::input::read_regular(path, WEB_CONFIG, MAX_FILE_BYTES)
        .map_err(|e| err("(file)", e.to_string()))?;
    let file: FileFormat = if bytes.iter().all(u8::is_ascii_whitespace) {
        FileFormat::default()
    } else {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| {
            err(
                "(syntax)",
                format!(
                    "{e}; the keys are tls_server_config, http_server_config and \
                     basic_auth_users (exporter-toolkit's web configuration)"
                ),
            )
        })?
    };
    // Relative paths are relative to the file, as in exporter-toolkit.
    let dir = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &PathBuf| dir.join(p);

    let users = Users::new(file.basic_auth_users.unwrap_or_default())
        .map_err(|(user, why)| err(&format!("basic_auth_users.{user}"), why))?;
    let users = Arc::new(users);

    let mut headers = Vec::new();
    for (name, value) in file
        .http_server_config
        .and_then(|h| h.headers)
        .unwrap_or_default()
    {
        let key = format!("http_server_config.headers.{name}");
        let Some(allowed) = ALLOWED_HEADERS
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&name))
        else {
            return Err(err(
                &key,
                format!(
                    "this header cannot be set; the allowed ones are {}",
                    ALLOWED_HEADERS.join(", ")
                ),
            ));
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            err(
                &key,
                "the value holds characters a header cannot carry (control characters)".into(),
            )
        })?;
        headers.push((HeaderName::from_static(leak_lower(allowed)), value));
    }

    let tls = match file.tls_server_config {
        None => None,
        Some(t) => build_tls(t, &resolve, files, &err)?,
    };
    Ok(WebConfig {
        tls,
        users,
        headers,
    })
}

/// The lower-case `'static` header name of an allowed header.
fn leak_lower(name: &str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

/// `--web.config.file` for [`crate::input`]'s messages.
pub const WEB_CONFIG: crate::input::InputKind = crate::input::InputKind {
    what: "web config file",
    flag: "--web.config.file",
    example: "/etc/scan-agent/web-config.yml",
};

/// The PEM certificates in `bytes`, read from `file`: at least one.
fn pem_certificates(file: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{file:?} is not PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "{file:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn version(key: &str, text: &str) -> Result<&'static SupportedProtocolVersion, String> {
    match text {
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS10" | "TLS11" => Err(format!(
            "{text} is not supported (TLS 1.0 and 1.1 are broken; rustls speaks 1.2 and 1.3): \
             use {key}: TLS12"
        )),
        _ => Err(format!("{text:?} is not a TLS version: use TLS12 or TLS13")),
    }
}

fn build_tls(
    t: TlsFile,
    resolve: &dyn Fn(&PathBuf) -> PathBuf,
    files: &mut Vec<PathBuf>,
    err: &dyn Fn(&str, String) -> WebConfigError,
) -> Result<Option<Arc<ServerConfig>>, WebConfigError> {
    for (key, set) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        (
            "prefer_server_cipher_suites",
            t.prefer_server_cipher_suites.is_some(),
        ),
    ] {
        if set {
            return Err(err(
                &format!("tls_server_config.{key}"),
                "not supported: rustls negotiates only modern suites and curves by itself; \
                 remove the key"
                    .into(),
            ));
        }
    }
    let (cert_file, key_file) = match (&t.cert_file, &t.key_file) {
        (None, None) => {
            let anything = t.client_auth_type.is_some()
                || t.client_ca_file.is_some()
                || t.client_allowed_sans.is_some()
                || t.min_version.is_some()
                || t.max_version.is_some();
            if anything {
                return Err(err(
                    "tls_server_config.cert_file",
                    "missing: TLS settings without a certificate; give cert_file and key_file"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(err(
                "tls_server_config.key_file",
                "missing: cert_file needs the matching private key in key_file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "tls_server_config.cert_file",
                "missing: key_file needs the certificate chain in cert_file".into(),
            ));
        }
        (Some(c), Some(k)) => (resolve(c), resolve(k)),
    };
    files.push(cert_file.clone());
    files.push(key_file.clone());
    let read = |key: &str, path: &Path| {
        crate::input::read_regular(path, WEB_CONFIG, MAX_FILE_BYTES)
            .map_err(|e| err(key, format!("{path:?}: {e}")))
    };
    let certificates =
        |key: &str, file: &Path| pem_certificates(file, &read(key, file)?).map_err(|m| err(key, m));
    let certs = certificates("tls_server_config.cert_file", &cert_file)?;
    let key = PrivateKeyDer::from_pem_slice(&read("tls_server_config.key_file", &key_file)?)
        .map_err(|e| {
            err(
                "tls_server_config.key_file",
                format!("{key_file:?} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            )
        })?;

    let auth = match t.client_auth_type.as_deref() {
        None => ClientAuth::NoClientCert,
        Some(name) => ClientAuth::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let names: Vec<&str> = ClientAuth::ALL.iter().map(|(n, _)| *n).collect();
                err(
                    "tls_server_config.client_auth_type",
                    format!("{name:?} is not a policy: use one of {}", names.join(", ")),
                )
            })?,
    };
    let sans = t.client_allowed_sans.unwrap_or_default();
    if !sans.is_empty() && !auth.verifies() {
        return Err(err(
            "tls_server_config.client_allowed_sans",
            "needs verified client certificates: set client_auth_type to \
             RequireAndVerifyClientCert (and client_ca_file)"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match (auth, &t.client_ca_file) {
        (ClientAuth::NoClientCert, None) => None,
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                "client CAs are given but client_auth_type is NoClientCert: set \
                 client_auth_type to RequireAndVerifyClientCert, or remove client_ca_file"
                    .into(),
            ));
        }
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => {
            Some(Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                algorithms: provider.signature_verification_algorithms,
            }))
        }
        (_, None) => {
            return Err(err(
                "tls_server_config.client_ca_file",
                "missing: client certificates can only be verified against CA certificates; \
                 give client_ca_file"
                    .into(),
            ));
        }
        (_, Some(ca)) => {
            let ca = resolve(ca);
            files.push(ca.clone());
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("tls_server_config.client_ca_file", &ca)? {
                roots.add(cert).map_err(|e| {
                    err(
                        "tls_server_config.client_ca_file",
                        format!("{ca:?}: a certificate cannot be used as a CA: {e}"),
                    )
                })?;
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if auth == ClientAuth::VerifyClientCertIfGiven {
                builder = builder.allow_unauthenticated();
            }
            let webpki = builder.build().map_err(|e| {
                err(
                    "tls_server_config.client_ca_file",
                    format!("{ca:?}: cannot verify clients with it: {e}"),
                )
            })?;
            Some(if sans.is_empty() {
                webpki
            } else {
                Arc::new(AllowedSans {
                    inner: webpki,
                    allowed: sans,
                })
            })
        }
    };

    let min = t
        .min_version
        .as_deref()
        .map(|v| version("min_version", v))
        .transpose()
        .map_err(|m| err("tls_server_config.min_version", m))?
        .unwrap_or(&rustls::version::TLS12);
    let max = t
        .max_version
        .as_deref()
        .map(|v| version("max_version", v))
        .transpose()
        .map_err(|m| err("tls_server_config.max_version", m))?
        .unwrap_or(&rustls::version::TLS13);
    let rank = |v: &SupportedProtocolVersion| u16::from(v.version);
    if rank(min) > rank(max) {
        return Err(err(
            "tls_server_config.min_version",
            "is above max_version: no TLS version is left; lower min_version or raise \
             max_version"
                .into(),
        ));
    }
    let versions: Vec<&'static SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| err("tls_server_config.min_version", e.to_string()))?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(v) => builder.with_client_cert_verifier(v),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        err(
            "tls_server_config.key_file",
            format!(
                "{key_file:?} does not go with the certificate in {cert_file:?} ({e}); give \
                 the private key of that certificate"
            ),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// `RequestClientCert` and `RequireAnyClientCert`: a certificate is asked for (and
/// required with `mandatory`) but not checked against any CA, as in Go; the client
/// still proves it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: a verified client certificate must also carry one of these
/// subject alternative names (DNS name, e-mail address, IP address or URI), compared
/// exactly as exporter-toolkit does.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl AllowedSans {
    fn names(cert: &CertificateDer<'_>) -> Vec<String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
            return Vec::new();
        };
        let Ok(Some(san)) = parsed.subject_alternative_name() else {
            return Vec::new();
        };
        san.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some(s.to_string())
                }
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => Some(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    16 => Some(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if Self::names(end_entity)
            .iter()
            .any(|name| self.allowed.contains(name))
        {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "the client certificate has none of client_allowed_sans".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
