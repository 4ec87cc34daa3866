//! A TLS listener's certificates: each loaded from its PEM files and checked against its key,
//! with the DNS names and expiry read from it, and the choice among them by the client's SNI
//! ([`Resolver`]).
//!
//! A leaf module: it knows files and certificates, not configuration paths or listeners. The
//! configuration names the field of an error; the runtime holds the resolver inside the rustls
//! `ServerConfig` of one listener generation.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert,
};
use pingora::utils::tls::CertKey;
use rustls_pki_types::pem::PemObject;

/// A certificate chain and its key, checked to belong together, with what an operator needs to
/// know of it.
#[derive(Clone)]
pub struct Certificate {
    /// The leaf's DNS names (subject alternative names), lowercase, as written (`*.a.test`).
    pub names: Vec<String>,
    /// The leaf's subject, as text (`CN=a.test`).
    pub subject: String,
    /// The leaf's notAfter, in Unix seconds.
    pub not_after: i64,
    /// The certificate file it was read from.
    pub cert_path: PathBuf,
    pub(crate) key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Why a certificate or key could not be used; each names the file at fault.
#[derive(Debug)]
pub enum CertificateError {
    /// The certificate file could not be read.
    ReadCert(PathBuf, std::io::Error),
    /// The key file could not be read.
    ReadKey(PathBuf, std::io::Error),
    /// The certificate file holds no PEM certificate, or a broken one.
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key, or a broken one.
    NoKey(PathBuf),
    /// The leaf certificate is not valid X.509.
    Unparsable(PathBuf, String),
    /// The key does not belong to the certificate, or is of a kind that cannot sign.
    Mismatch(PathBuf, String),
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateError::ReadCert(path, e) | CertificateError::ReadKey(path, e) => {
                write!(f, "cannot read {}: {e}", path.display())
            }
            CertificateError::NoCertificate(path) => {
                write!(f, "no PEM certificate in {}", path.display())
            }
            CertificateError::NoKey(path) => write!(f, "no PEM private key in {}", path.display()),
            CertificateError::Unparsable(path, e) => {
                write!(f, "{} is not a valid certificate: {e}", path.display())
            }
            CertificateError::Mismatch(path, e) => {
                write!(f, "{} does not fit the certificate: {e}", path.display())
            }
        }
    }
}

impl std::error::Error for CertificateError {}

impl CertificateError {
    /// Whether the key file is at fault (else the certificate file).
    pub fn is_key(&self) -> bool {
        matches!(
            self,
            CertificateError::ReadKey(..)
                | CertificateError::NoKey(_)
                | CertificateError::Mismatch(..)
        )
    }
}

/// The certificate chain in `cert` (PEM, leaf first).
pub(crate) fn load_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let text =
        std::fs::read(cert).map_err(|e| CertificateError::ReadCert(cert.to_path_buf(), e))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertificateError::NoCertificate(cert.to_path_buf()))?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate(cert.to_path_buf()));
    }
    Ok(chain)
}

/// The private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_key(key: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    let text = std::fs::read(key).map_err(|e| CertificateError::ReadKey(key.to_path_buf(), e))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|_| CertificateError::NoKey(key.to_path_buf()))
}

/// Loads the chain in `cert` and the key in `key`, and checks that they belong together.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Certificate, CertificateError> {
    let chain = load_chain(cert)?;
    let private = load_key(key)?;
    certify(cert, key, chain, private)
}

fn certify(
    cert: &Path,
    key: &Path,
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
) -> Result<Certificate, CertificateError> {
    let (names, subject, not_after) = describe(cert, &chain[0])?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or_else(|| {
        CertificateError::Mismatch(key.to_path_buf(), "no TLS crypto provider".into())
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| CertificateError::Mismatch(key.to_path_buf(), e.to_string()))?;
    Ok(Certificate {
        names,
        subject,
        not_after,
        cert_path: cert.to_path_buf(),
        key: Arc::new(certified),
    })
}

/// A client certificate for upstreams that require one, in the form Pingora's connector takes;
/// checked as [`load`] does, and every certificate of the chain parsed (Pingora's `CertKey`
/// would panic on one it cannot parse).
pub(crate) fn load_client(cert: &Path, key: &Path) -> Result<Arc<CertKey>, CertificateError> {
    let chain = load_chain(cert)?;
    let private = load_key(key)?;
    for der in &chain {
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertificateError::Unparsable(cert.to_path_buf(), e.to_string()))?;
    }
    let ders = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    let secret = private.secret_der().to_vec();
    // Pingora's connector turns the bytes back into a key, and panics if it cannot tell the kind.
    if PrivateKeyDer::try_from(secret.clone()).is_err() {
        return Err(CertificateError::NoKey(key.to_path_buf()));
    }
    certify(cert, key, chain, private)?;
    Ok(Arc::new(CertKey::new(ders, secret)))
}

/// The DNS names, subject and notAfter of a leaf certificate.
fn describe(
    path: &Path,
    leaf: &CertificateDer<'_>,
) -> Result<(Vec<String>, String, i64), CertificateError> {
    use x509_parser::extensions::GeneralName;
    let unparsable = |e: String| CertificateError::Unparsable(path.to_path_buf(), e);
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| unparsable(e.to_string()))?;
    let mut names = Vec::new();
    if let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| unparsable(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((
        names,
        parsed.subject().to_string(),
        parsed.validity().not_after.timestamp(),
    ))
}

/// What a handshake gets when the client's SNI names no certificate, or when it sends none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSni {
    /// The first certificate.
    #[default]
    Default,
    /// No certificate: the handshake is refused.
    Refuse,
}

/// Chooses a listener's certificate by SNI: an exact name first, then the wildcard of the
/// name's parent (`*.a.test` covers `x.a.test`, not `a.test` nor `y.x.a.test`, as RFC 6125
/// has it); otherwise the first certificate, or none under [`UnknownSni::Refuse`].
#[derive(Debug)]
pub(crate) struct Resolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Resolver {
    /// Over `certificates`, in order: a name in two certificates goes to the first.
    pub(crate) fn new(certificates: &[Certificate], unknown: UnknownSni) -> Resolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certificates {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        let default = match unknown {
            UnknownSni::Default => certificates.first().map(|c| c.key.clone()),
            UnknownSni::Refuse => None,
        };
        Resolver {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a client that asked for `sni` (rustls hands it over lowercase).
    pub(crate) fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.');
        if let Some(key) = self.exact.get(name) {
            return Some(key.clone());
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .or(self.default.as_ref())
            .cloned()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver over keys told apart by identity; the key material is never used.
    fn resolver(names: &[&[&str]], unknown: UnknownSni) -> (Resolver, Vec<Arc<CertifiedKey>>) {
        pingora::tls::install_default_crypto_provider();
        let mut keys = Vec::new();
        let certificates: Vec<_> = names
            .iter()
            .map(|names| {
                let key = rcgen::KeyPair::generate().expect("key");
                let cert = rcgen::CertificateParams::new(Vec::<String>::new())
                    .expect("params")
                    .self_signed(&key)
                    .expect("cert");
                let private = PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key");
                let provider = CryptoProvider::get_default().expect("provider");
                let certified = Arc::new(
                    CertifiedKey::from_der(vec![cert.der().clone()], private, provider)
                        .expect("certified"),
                );
                keys.push(certified.clone());
                Certificate {
                    names: names.iter().map(|n| n.to_string()).collect(),
                    subject: String::new(),
                    not_after: 0,
                    cert_path: PathBuf::new(),
                    key: certified,
                }
            })
            .collect();
        (Resolver::new(&certificates, unknown), keys)
    }

    fn which(resolver: &Resolver, keys: &[Arc<CertifiedKey>], sni: Option<&str>) -> Option<usize> {
        let chosen = resolver.choose(sni)?;
        keys.iter().position(|k| Arc::ptr_eq(k, &chosen))
    }

    #[test]
    fn exact_names_then_one_level_wildcards_then_the_default() {
        let (r, keys) = resolver(
            &[
                &["a.test"],
                &["b.test", "*.b.test"],
                &["*.w.test", "x.w.test"],
                &["b.test"],
            ],
            UnknownSni::Default,
        );
        assert_eq!(which(&r, &keys, Some("a.test")), Some(0));
        assert_eq!(
            which(&r, &keys, Some("b.test")),
            Some(1),
            "the first listed wins"
        );
        assert_eq!(which(&r, &keys, Some("y.b.test")), Some(1));
        assert_eq!(which(&r, &keys, Some("x.w.test")), Some(2));
        assert_eq!(which(&r, &keys, Some("z.w.test")), Some(2));
        assert_eq!(
            which(&r, &keys, Some("z.w.test.")),
            Some(2),
            "a trailing dot"
        );
        assert_eq!(
            which(&r, &keys, Some("w.test")),
            Some(0),
            "a wildcard is not its parent"
        );
        assert_eq!(
            which(&r, &keys, Some("a.z.w.test")),
            Some(0),
            "one level only"
        );
        assert_eq!(which(&r, &keys, Some("c.test")), Some(0));
        assert_eq!(which(&r, &keys, None), Some(0));
    }

    #[test]
    fn refuse_gives_no_certificate_to_an_unknown_name_or_none() {
        let (r, keys) = resolver(&[&["a.test"], &["*.w.test"]], UnknownSni::Refuse);
        assert_eq!(which(&r, &keys, Some("a.test")), Some(0));
        assert_eq!(which(&r, &keys, Some("x.w.test")), Some(1));
        assert!(r.choose(Some("c.test")).is_none());
        assert!(r.choose(None).is_none());
    }
}
