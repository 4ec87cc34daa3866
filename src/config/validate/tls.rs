//! TLS settings, loaded and checked while validating: a listener's certificates and policy
//! (turned into the rustls `ServerConfig` of its handshakes) and an upstream's client
//! certificate. Everything that could fail is tried here, so that starting a listener, or
//! swapping its certificates on reload, never can.

use std::path::Path;
use std::sync::Arc;

use pingora::tls::version::{TLS12, TLS13};
use pingora::tls::{CryptoProvider, RootCertStore, ServerConfig, WebPkiClientVerifier};
use pingora::utils::tls::CertKey;
use rustls::SupportedCipherSuite;
use rustls::server::NoServerSessionStorage;

use super::Errors;
use crate::certificates::{self, Certificate, CertificateError, Resolver, UnknownSni};
use crate::config::file::{
    CertificateFile, ClientAuthFile, ListenerTlsFile, UnknownSniFile, VersionText,
};
use crate::config::{ClientAuth, ListenerTls, TlsVersion};

/// The TLS settings of the listener at `at` (`listeners[0].tls`), or `None` after reporting
/// every problem found.
pub(super) fn listener(
    at: &str,
    file: &ListenerTlsFile,
    base: &Path,
    errors: &mut Errors,
) -> Option<Arc<ListenerTls>> {
    let before = errors.0.len();
    let certificates = listener_certificates(at, file, base, errors);
    let min_version = min_version(at, file.min_version.as_ref(), errors);
    pingora::tls::install_default_crypto_provider();
    let Some(default) = CryptoProvider::get_default() else {
        errors.push(at, "no TLS crypto provider");
        return None;
    };
    let mut provider = CryptoProvider::clone(default);
    let cipher_suites = match &file.cipher_suites {
        None => provider
            .cipher_suites
            .iter()
            .map(|s| s.suite().as_str().unwrap_or("unnamed").to_string())
            .collect(),
        Some(names) => {
            let offered = provider.cipher_suites.clone();
            let chosen = cipher_suites(at, names, min_version, &offered, errors);
            provider.cipher_suites = chosen.into_iter().map(|i| offered[i]).collect();
            names.clone()
        }
    };
    let provider = Arc::new(provider);
    let client_auth = client_auth(at, file, base, &provider, errors);
    if errors.0.len() > before {
        return None;
    }
    let (min_version, client_auth) = (min_version?, client_auth?);
    let versions = match min_version {
        TlsVersion::Tls12 => &[&TLS12, &TLS13][..],
        TlsVersion::Tls13 => &[&TLS13][..],
    };
    let builder =
        match ServerConfig::builder_with_provider(provider).with_protocol_versions(versions) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{at}.cipher_suites"), e.to_string());
                return None;
            }
        };
    let builder = match &client_auth {
        Some((_, verifier)) => builder.with_client_cert_verifier(verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let unknown_sni = match file.unknown_sni {
        UnknownSniFile::Default => UnknownSni::Default,
        UnknownSniFile::Refuse => UnknownSni::Refuse,
    };
    let mut server_config =
        builder.with_cert_resolver(Arc::new(Resolver::new(&certificates, unknown_sni)));
    // As Pingora's `ALPN::H2H1`: HTTP/2 preferred; without it, no ALPN, as before.
    if file.http2 {
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    if !file.session_resumption {
        // rustls keeps sessions in memory and sends TLS 1.3 tickets naming them by default;
        // neither, and a client offering a session gets a full handshake.
        server_config.session_storage = Arc::new(NoServerSessionStorage {});
        server_config.send_tls13_tickets = 0;
    }
    Some(Arc::new(ListenerTls {
        certificates,
        unknown_sni,
        min_version,
        cipher_suites,
        client_auth: client_auth.map(|(c, _)| c),
        session_resumption: file.session_resumption,
        server_config: Arc::new(server_config),
    }))
}

/// The certificates of `certificates:`, or of the `cert`/`key` shorthand.
fn listener_certificates(
    at: &str,
    file: &ListenerTlsFile,
    base: &Path,
    errors: &mut Errors,
) -> Vec<Certificate> {
    match (&file.cert, &file.key, &file.certificates) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            errors.push(
                format!("{at}.certificates"),
                "cannot be used with cert and key (list the certificate in certificates)",
            );
            Vec::new()
        }
        (Some(cert), Some(key), None) => load(at, cert, key, base, errors).into_iter().collect(),
        (Some(_), None, None) => {
            errors.push(format!("{at}.key"), "required with cert");
            Vec::new()
        }
        (None, Some(_), None) => {
            errors.push(format!("{at}.cert"), "required with key");
            Vec::new()
        }
        (None, None, None) => {
            errors.push(
                format!("{at}.certificates"),
                "at least one certificate is required (or cert and key)",
            );
            Vec::new()
        }
        (None, None, Some(list)) => {
            if list.is_empty() {
                errors.push(
                    format!("{at}.certificates"),
                    "at least one certificate is required",
                );
            }
            let mut loaded = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let path = format!("{at}.certificates[{i}]");
                let Some(certificate) = load(&path, &c.cert, &c.key, base, errors) else {
                    continue;
                };
                // Only the first is chosen without a name; another without one never is.
                if i > 0 && certificate.names.is_empty() {
                    errors.push(
                        format!("{path}.cert"),
                        format!(
                            "{} has no DNS name (subject alternative name), so no client could ever get it",
                            certificate.cert_path.display()
                        ),
                    );
                }
                loaded.push(certificate);
            }
            loaded
        }
    }
}

/// One certificate and key; an error names the field of the file at fault (`{at}.cert` or
/// `{at}.key`) and the file.
fn load(at: &str, cert: &str, key: &str, base: &Path, errors: &mut Errors) -> Option<Certificate> {
    certificates::load(&base.join(cert), &base.join(key))
        .map_err(|e| report(at, &e, errors))
        .ok()
}

fn report(at: &str, e: &CertificateError, errors: &mut Errors) {
    let field = if e.is_key() { "key" } else { "cert" };
    errors.push(format!("{at}.{field}"), e.to_string());
}

fn min_version(at: &str, text: Option<&VersionText>, errors: &mut Errors) -> Option<TlsVersion> {
    let text = match text {
        None => return Some(TlsVersion::Tls12),
        Some(VersionText::Text(t)) => t.clone(),
        Some(VersionText::Number(n)) => n.to_string(),
    };
    match text.as_str() {
        "1.2" => Some(TlsVersion::Tls12),
        "1.3" => Some(TlsVersion::Tls13),
        _ => {
            errors.push(
                format!("{at}.min_version"),
                format!("\"{text}\" is not a version taken: \"1.2\" or \"1.3\""),
            );
            None
        }
    }
}

/// The suites named, as indices into those `offered` by the crypto provider, in the order given.
fn cipher_suites(
    at: &str,
    names: &[String],
    min_version: Option<TlsVersion>,
    offered: &[SupportedCipherSuite],
    errors: &mut Errors,
) -> Vec<usize> {
    if names.is_empty() {
        errors.push(
            format!("{at}.cipher_suites"),
            "at least one cipher suite is required (or leave it out for all of them)",
        );
    }
    let mut chosen = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match offered
            .iter()
            .position(|s| s.suite().as_str() == Some(name.as_str()))
        {
            Some(index) => chosen.push(index),
            None => {
                let names: Vec<_> = offered.iter().filter_map(|s| s.suite().as_str()).collect();
                errors.push(
                    format!("{at}.cipher_suites[{i}]"),
                    format!(
                        "unknown cipher suite \"{name}\"; the crypto provider offers: {}",
                        names.join(", ")
                    ),
                );
            }
        }
    }
    if min_version == Some(TlsVersion::Tls13)
        && !chosen.is_empty()
        && !chosen.iter().any(|&i| offered[i].version() == &TLS13)
    {
        errors.push(
            format!("{at}.cipher_suites"),
            "no TLS 1.3 suite, and min_version is \"1.3\"",
        );
    }
    chosen
}

type Verifier = Arc<dyn pingora::tls::ClientCertVerifier>;

/// `client_ca` and `client_auth`: `Some(None)` when no client certificate is asked for; `None`
/// after reporting a problem.
fn client_auth(
    at: &str,
    file: &ListenerTlsFile,
    base: &Path,
    provider: &Arc<CryptoProvider>,
    errors: &mut Errors,
) -> Option<Option<(ClientAuth, Verifier)>> {
    let ca = match (&file.client_ca, file.client_auth) {
        (None, None) => return Some(None),
        (None, Some(_)) => {
            errors.push(format!("{at}.client_auth"), "requires client_ca");
            return None;
        }
        (Some(ca), _) => base.join(ca),
    };
    let required = !matches!(file.client_auth, Some(ClientAuthFile::Optional));
    let field = format!("{at}.client_ca");
    let mut roots = RootCertStore::empty();
    if let Err(e) = pingora::tls::load_ca_file_into_store(&ca, &mut roots) {
        errors.push(
            field,
            format!("cannot load CA certificates from {}: {e}", ca.display()),
        );
        return None;
    }
    if roots.is_empty() {
        errors.push(field, format!("no CA certificate in {}", ca.display()));
        return None;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !required {
        builder = builder.allow_unauthenticated();
    }
    match builder.build() {
        Ok(verifier) => Some(Some((
            ClientAuth {
                ca_file: ca,
                required,
            },
            verifier,
        ))),
        Err(e) => {
            errors.push(field, format!("{}: {e}", ca.display()));
            None
        }
    }
}

/// An upstream's client certificate (`{at}` is `upstreams.X.tls.client_cert`).
pub(super) fn client_cert(
    at: &str,
    file: &CertificateFile,
    base: &Path,
    errors: &mut Errors,
) -> Option<Arc<CertKey>> {
    certificates::load_client(&base.join(&file.cert), &base.join(&file.key))
        .map_err(|e| report(at, &e, errors))
        .ok()
}

/// The CA file that verifies upstream certificates.
pub(super) fn check_ca_file(at: &str, path: &str, errors: &mut Errors) {
    let mut store = RootCertStore::empty();
    if let Err(e) = pingora::tls::load_ca_file_into_store(path, &mut store) {
        errors.push(at, format!("cannot load CA certificates from {path}: {e}"));
    } else if store.is_empty() {
        errors.push(at, format!("no CA certificate in {path}"));
    }
}
