//! TLS at the edge with many certificates: the certificate chosen by SNI, rotation on reload
//! under a stream of requests, a broken file on reload, the TLS policy (minimum version, cipher
//! suites, client certificates) and a client certificate towards an upstream that requires one.
//! The clients are rustls (tokio-rustls); the certificates are made by rcgen at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pingora::tls::{
    CertificateDer, ClientConfig, ClientTlsStream, DigitallySignedStruct, HandshakeSignatureValid,
    PrivateKeyDer, RootCertStore, ServerCertVerified, ServerCertVerifier, ServerConfig, ServerName,
    SignatureScheme, TlsConnector, UnixTime, WebPkiClientVerifier,
};
use rcgen::{Certificate, CertificateParams, DnType, KeyPair};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client;
use crate::harness::{Proxy, free_addr, status_now};
use crate::origin::{Behavior, Origin, runtime};

const TLS_FAILURES: &str = "faultline_client_handshake_failures_total{protocol=\"tls\"}";

/// 2031-01-01T00:00:00Z and 2032-01-01T00:00:00Z, in Unix seconds.
const Y2031: i64 = 1_924_992_000;
const Y2032: i64 = 1_956_528_000;

/// A test CA and a folder for the certificate files, removed on drop.
struct Pki {
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A leaf certificate and its key.
struct Leaf {
    cert: Certificate,
    key: KeyPair,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        pingora::tls::install_default_crypto_provider();
        let dir = std::env::temp_dir().join(format!("faultline-sni-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let (ca, ca_key) = crate::tls::ca("faultline sni CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        Pki { dir, ca, ca_key }
    }

    /// A leaf for `names` signed by the CA, valid until `not_after` (Unix seconds).
    fn leaf(&self, names: &[&str], not_after: i64) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("none"));
        params.not_after = match not_after {
            Y2031 => rcgen::date_time_ymd(2031, 1, 1),
            Y2032 => rcgen::date_time_ymd(2032, 1, 1),
            other => panic!("no date for {other}"),
        };
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        Leaf { cert, key }
    }

    /// A self-signed leaf for `names`: not from the CA.
    fn rogue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("sign");
        Leaf { cert, key }
    }

    /// Writes `leaf` as `name.pem` and `name.key` (each replaced whole, by a rename, as a
    /// certificate manager does); their paths.
    fn write(&self, name: &str, leaf: &Leaf) -> (String, String) {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        replace(&cert, leaf.cert.pem().as_bytes());
        replace(&key, leaf.key.serialize_pem().as_bytes());
        (cert.display().to_string(), key.display().to_string())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("root");
        roots
    }
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Accepts any server certificate and keeps nothing: the test reads the certificate the server
/// sent from the connection, whatever name it was asked for.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, pingora::tls::RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pingora::tls::CryptoProvider::get_default()
            .expect("provider")
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How a test client connects.
#[derive(Clone, Copy)]
enum Trust<'a> {
    /// Verifies the server against the test CA.
    Ca(&'a Pki),
    /// Takes any certificate (to see which one an unknown name gets).
    Any,
}

fn client_config(trust: Trust<'_>, tls12_only: bool, cert: Option<&Leaf>) -> ClientConfig {
    let builder = if tls12_only {
        ClientConfig::builder_with_protocol_versions(&[&pingora::tls::version::TLS12])
    } else {
        ClientConfig::builder()
    };
    let builder = match trust {
        Trust::Ca(pki) => builder.with_root_certificates(pki.roots()),
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate)),
    };
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert.der().clone()],
                PrivateKeyDer::try_from(leaf.key.serialize_der()).expect("key der"),
            )
            .expect("client cert"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A TLS connection to `addr` asking for `sni` (none with `None`).
async fn connect(
    config: &ClientConfig,
    addr: SocketAddr,
    sni: Option<&str>,
) -> std::io::Result<ClientTlsStream<tokio::net::TcpStream>> {
    let mut config = config.clone();
    config.enable_sni = sni.is_some();
    // Without SNI the name is still what a certificate is verified against.
    let name = ServerName::try_from(sni.unwrap_or("a.test").to_string()).expect("name");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server sent on `tls`.
fn leaf_seen(tls: &ClientTlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a server certificate")
}

/// One GET of `path` for `host` on a kept-alive connection: status and body, or the error of
/// the exchange.
async fn get(
    tls: &mut ClientTlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {} bytes", raw.len())),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head}"))?;
    while raw.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk).await {
            Ok(0) => return Err("closed mid-body".into()),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).to_string();
    Ok((status, body))
}

/// A new connection asking for `sni`, one GET on it: the leaf the server sent, and the answer.
async fn handshake_and_get(
    config: &ClientConfig,
    addr: SocketAddr,
    sni: Option<&str>,
) -> Result<(Vec<u8>, (u16, String)), String> {
    let mut tls = connect(config, addr, sni)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = leaf_seen(&tls);
    let answer = get(&mut tls, sni.unwrap_or("a.test"), "/").await?;
    Ok((leaf, answer))
}

/// The DNS names of a DER certificate, for messages.
fn names_of(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The whole configuration of a TLS listener at `addr` with `tls` as its settings.
fn yaml(addr: SocketAddr, admin: SocketAddr, tls: &str, origin: &Origin) -> String {
    format!(
        "server: {{ threads: 1 }}\nlisteners:\n  - address: \"{addr}\"\n    tls:\n{tls}\nadmin: {{ address: \"{admin}\" }}\nupstreams:\n  app: {{ backends: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ upstream: app }}\n",
        origin.addr
    )
}

/// `certificates:` of these files, indented for [`yaml`].
fn certificates(files: &[&(String, String)]) -> String {
    let mut s = String::from("      certificates:\n");
    for (cert, key) in files {
        s.push_str(&format!(
            "        - {{ cert: \"{cert}\", key: \"{key}\" }}\n"
        ));
    }
    s
}

fn start(tls: &str, origin: &Origin) -> Proxy {
    let (addr, admin) = (free_addr(), free_addr());
    Proxy::start_yaml(addr, admin, &yaml(addr, admin, tls, origin))
}

/// Starts faultline from a file in `pki`'s folder, reloadable; the file's path too.
fn start_reloadable(pki: &Pki, tls: &str, origin: &Origin) -> (Proxy, PathBuf) {
    let (addr, admin) = (free_addr(), free_addr());
    let file = pki.dir.join("faultline.yaml");
    std::fs::write(&file, yaml(addr, admin, tls, origin)).expect("write config");
    (Proxy::start_file(addr, admin, &file), file)
}

fn reload(proxy: &Proxy) -> client::Response {
    client::send_one(proxy.admin, "POST", "/reload", &[("content-length", "0")])
}

#[test]
fn each_hostname_on_one_listener_gets_its_certificate_by_sni() {
    let pki = Pki::new("names");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let b = pki.leaf(&["b.test"], Y2032);
    let w = pki.leaf(&["*.w.test"], Y2031);
    let files = [pki.write("a", &a), pki.write("b", &b), pki.write("w", &w)];
    let tls = certificates(&files.iter().collect::<Vec<_>>());
    let proxy = start(&tls, &origin);

    let verified = client_config(Trust::Ca(&pki), false, None);
    let any = client_config(Trust::Any, false, None);
    let ok = (200, "origin o".to_string());
    runtime().block_on(async {
        // Each name verifies against the CA: the client got the certificate for its name.
        for (sni, leaf) in [("a.test", &a), ("b.test", &b), ("x.w.test", &w)] {
            let (seen, answer) = handshake_and_get(&verified, proxy.addr, Some(sni))
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert_eq!(
                seen,
                leaf.cert.der().to_vec(),
                "{sni} got {:?}",
                names_of(&seen)
            );
            assert_eq!(answer, ok, "{sni}");
        }
        // An unknown name, a name the wildcard does not cover, and no SNI: the first.
        for sni in [Some("c.test"), Some("y.x.w.test"), Some("w.test"), None] {
            let (seen, answer) = handshake_and_get(&any, proxy.addr, sni)
                .await
                .unwrap_or_else(|e| panic!("{sni:?}: {e}"));
            assert_eq!(names_of(&seen), vec!["a.test".to_string()], "{sni:?}");
            assert_eq!(seen, a.cert.der().to_vec(), "{sni:?}");
            assert_eq!(answer, ok, "{sni:?}");
        }
    });
    assert_eq!(proxy.metric(TLS_FAILURES), 0);

    // Each certificate's names and expiry, in /status and as a gauge.
    let status = status_now(&proxy);
    let listener = &status["tls"][0];
    assert_eq!(listener["listener"], proxy.addr.to_string());
    let certs = listener["certificates"].as_array().expect("certificates");
    let seen: Vec<_> = certs
        .iter()
        .map(|c| {
            (
                c["names"].clone(),
                c["not_after"].as_i64().expect("not_after"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (serde_json::json!(["a.test"]), Y2031),
            (serde_json::json!(["b.test"]), Y2032),
            (serde_json::json!(["*.w.test"]), Y2031),
        ]
    );
    assert_eq!(certs[1]["file"], files[1].0.as_str());
    for (label, value) in [("a.test", Y2031), ("b.test", Y2032), ("*.w.test", Y2031)] {
        let series = format!(
            "faultline_tls_certificate_expiry_seconds{{listener=\"{}\",certificate=\"{label}\"}}",
            proxy.addr
        );
        assert_eq!(
            proxy.metric(&series),
            u64::try_from(value).expect("positive")
        );
    }
}

#[test]
fn unknown_sni_refuse_refuses_the_handshake_and_counts_it() {
    let pki = Pki::new("refuse");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let b = pki.leaf(&["b.test"], Y2031);
    let files = [pki.write("a", &a), pki.write("b", &b)];
    let tls = format!(
        "{}      unknown_sni: refuse\n",
        certificates(&files.iter().collect::<Vec<_>>())
    );
    let proxy = start(&tls, &origin);
    let any = client_config(Trust::Any, false, None);
    runtime().block_on(async {
        let (seen, answer) = handshake_and_get(&any, proxy.addr, Some("b.test"))
            .await
            .expect("a known name");
        assert_eq!(seen, b.cert.der().to_vec());
        assert_eq!(answer, (200, "origin o".to_string()));
        for sni in [Some("c.test"), None] {
            let e = connect(&any, proxy.addr, sni)
                .await
                .map(|_| ())
                .expect_err("an unknown name is refused");
            assert!(e.to_string().contains("AccessDenied"), "{sni:?}: {e}");
        }
    });
    proxy.wait_for_metric(TLS_FAILURES, |n| n == 2, "two refused handshakes");
    assert_eq!(origin.requests(), 1);
}

#[test]
fn certificates_replaced_and_reloaded_under_a_stream_of_requests_fail_none() {
    let pki = Pki::new("rotate");
    let origin = Origin::start(Behavior::named("o"));
    let old = pki.leaf(&["a.test"], Y2031);
    let b = pki.leaf(&["b.test"], Y2031);
    let files = [pki.write("a", &old), pki.write("b", &b)];
    let (proxy, _file) = start_reloadable(
        &pki,
        &certificates(&files.iter().collect::<Vec<_>>()),
        &origin,
    );
    let config = client_config(Trust::Ca(&pki), false, None);
    let new = pki.leaf(&["a.test"], Y2032);
    let addr = proxy.addr;

    // A connection opened before the rotation.
    let mut before = runtime()
        .block_on(connect(&config, addr, Some("a.test")))
        .expect("handshake");
    assert_eq!(leaf_seen(&before), old.cert.der().to_vec());
    assert_eq!(
        runtime().block_on(get(&mut before, "a.test", "/")),
        Ok((200, "origin o".to_string()))
    );

    // Four clients, each a new connection per request, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let after_reload = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (config, stop, reloaded, after_reload) = (
                config.clone(),
                stop.clone(),
                reloaded.clone(),
                after_reload.clone(),
            );
            let (old_der, new_der) = (old.cert.der().to_vec(), new.cert.der().to_vec());
            runtime().spawn(async move {
                let (mut done, mut failures) = (0u64, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    // Read before the handshake: a handshake that starts after the reload
                    // answered must see the new certificate.
                    let started_after = reloaded.load(Ordering::SeqCst);
                    match handshake_and_get(&config, addr, Some("a.test")).await {
                        Ok((seen, answer)) => {
                            if answer != (200, "origin o".to_string()) {
                                failures.push(format!("{answer:?}"));
                            } else if started_after && seen != new_der {
                                failures.push("the old certificate after the reload".into());
                            } else if seen != old_der && seen != new_der {
                                failures.push("an unknown certificate".into());
                            }
                            if started_after {
                                after_reload.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => failures.push(e),
                    }
                    done += 1;
                }
                (done, failures)
            })
        })
        .collect();

    // Some requests before the rotation, then the files replaced and the reload.
    while origin.requests() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    pki.write("a", &new);
    let resp = reload(&proxy);
    assert_eq!((resp.status, resp.text().as_str()), (200, "reloaded\n"));
    reloaded.store(true, Ordering::SeqCst);
    while after_reload.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let (done, failures) = runtime().block_on(c).expect("client task");
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        total += done;
    }
    assert!(total >= 40, "{total} requests");

    // A new handshake gets the new certificate; the connection opened before still works on
    // the session it made.
    let (seen, answer) = runtime()
        .block_on(handshake_and_get(&config, addr, Some("a.test")))
        .expect("after");
    assert_eq!(seen, new.cert.der().to_vec());
    assert_eq!(answer, (200, "origin o".to_string()));
    assert_eq!(
        runtime().block_on(get(&mut before, "a.test", "/")),
        Ok((200, "origin o".to_string()))
    );
    assert_eq!(leaf_seen(&before), old.cert.der().to_vec());
    let series = format!(
        "faultline_tls_certificate_expiry_seconds{{listener=\"{addr}\",certificate=\"a.test\"}}"
    );
    assert_eq!(
        proxy.metric(&series),
        u64::try_from(Y2032).expect("positive")
    );
    assert_eq!(
        proxy.metric("faultline_config_reloads_total{result=\"success\"}"),
        1
    );
    assert_eq!(proxy.metric(TLS_FAILURES), 0);
}

#[test]
fn a_broken_certificate_file_on_reload_keeps_the_old_one_and_names_the_path() {
    let pki = Pki::new("broken");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let b = pki.leaf(&["b.test"], Y2031);
    let files = [pki.write("a", &a), pki.write("b", &b)];
    let (proxy, _file) = start_reloadable(
        &pki,
        &certificates(&files.iter().collect::<Vec<_>>()),
        &origin,
    );
    let config = client_config(Trust::Ca(&pki), false, None);
    let still_b = || {
        let (seen, answer) = runtime()
            .block_on(handshake_and_get(&config, proxy.addr, Some("b.test")))
            .expect("b.test");
        assert_eq!(seen, b.cert.der().to_vec());
        assert_eq!(answer, (200, "origin o".to_string()));
    };

    // Not a certificate at all.
    std::fs::write(&files[1].0, "renewal went wrong\n").expect("write");
    let resp = reload(&proxy);
    assert_eq!(resp.status, 422);
    assert_eq!(
        resp.text(),
        format!(
            "reload failed, the running configuration stays:\nlisteners[0].tls.certificates[1].cert: no PEM certificate in {}\n",
            files[1].0
        )
    );
    still_b();

    // A renewed certificate beside the old key: they do not belong together.
    let renewed = pki.leaf(&["b.test"], Y2032);
    std::fs::write(&files[1].0, renewed.cert.pem()).expect("write");
    let resp = reload(&proxy);
    assert_eq!(resp.status, 422);
    let text = resp.text();
    let expected = format!(
        "reload failed, the running configuration stays:\nlisteners[0].tls.certificates[1].key: {} does not fit the certificate: ",
        files[1].1
    );
    assert!(text.starts_with(&expected), "{text}");
    still_b();
    assert_eq!(
        proxy.metric("faultline_config_reloads_total{result=\"failure\"}"),
        2
    );
    let series = format!(
        "faultline_tls_certificate_expiry_seconds{{listener=\"{}\",certificate=\"b.test\"}}",
        proxy.addr
    );
    assert_eq!(
        proxy.metric(&series),
        u64::try_from(Y2031).expect("positive")
    );

    // The key written too: the reload takes it.
    pki.write("b", &renewed);
    assert_eq!(reload(&proxy).status, 200);
    assert_eq!(
        proxy.metric(&series),
        u64::try_from(Y2032).expect("positive")
    );
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_only_client() {
    let pki = Pki::new("minver");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let files = [pki.write("a", &a)];
    let tls12 = client_config(Trust::Ca(&pki), true, None);
    let any = client_config(Trust::Ca(&pki), false, None);

    // The default takes TLS 1.2.
    let default = start(&certificates(&files.iter().collect::<Vec<_>>()), &origin);
    let (_, answer) = runtime()
        .block_on(handshake_and_get(&tls12, default.addr, Some("a.test")))
        .expect("TLS 1.2 by default");
    assert_eq!(answer, (200, "origin o".to_string()));

    let strict = start(
        &format!(
            "{}      min_version: \"1.3\"\n      cipher_suites: [TLS13_CHACHA20_POLY1305_SHA256]\n",
            certificates(&files.iter().collect::<Vec<_>>())
        ),
        &origin,
    );
    let e = runtime()
        .block_on(connect(&tls12, strict.addr, Some("a.test")))
        .map(|_| ())
        .expect_err("a TLS 1.2 client is refused");
    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
    strict.wait_for_metric(TLS_FAILURES, |n| n == 1, "the refused handshake is counted");
    let mut tls = runtime()
        .block_on(connect(&any, strict.addr, Some("a.test")))
        .expect("TLS 1.3");
    let session = tls.get_ref().1;
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str()),
        Some("TLS13_CHACHA20_POLY1305_SHA256")
    );
    assert_eq!(
        runtime().block_on(get(&mut tls, "a.test", "/")),
        Ok((200, "origin o".to_string()))
    );
    let status = status_now(&strict);
    assert_eq!(status["tls"][0]["min_version"], "1.3");
    assert_eq!(
        status["tls"][0]["cipher_suites"],
        serde_json::json!(["TLS13_CHACHA20_POLY1305_SHA256"])
    );
}

/// Two connections in turn from one client (one rustls session store), each with one GET: how
/// each handshake went, and the answers.
fn twice(config: &ClientConfig, addr: SocketAddr) -> Vec<(Option<HandshakeKind>, (u16, String))> {
    runtime().block_on(async {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut tls = connect(config, addr, Some("a.test"))
                .await
                .expect("handshake");
            let kind = tls.get_ref().1.handshake_kind();
            // The answer is read through TLS, so the tickets sent after the handshake are in.
            let answer = get(&mut tls, "a.test", "/").await.expect("an answer");
            seen.push((kind, answer));
        }
        seen
    })
}

#[test]
fn sessions_resume_by_default_and_never_with_session_resumption_false() {
    let pki = Pki::new("resume");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let files = [pki.write("a", &a)];
    let listed = certificates(&files.iter().collect::<Vec<_>>());
    let ok = (200, "origin o".to_string());
    // The listener's setting, how the second connection's handshake goes, what /status says.
    let cases = [
        ("", HandshakeKind::Resumed, true),
        (
            "      session_resumption: false\n",
            HandshakeKind::Full,
            false,
        ),
    ];
    for tls12_only in [false, true] {
        for (setting, second, shown) in cases {
            let client = client_config(Trust::Ca(&pki), tls12_only, None);
            let proxy = start(&format!("{listed}{setting}"), &origin);
            assert_eq!(
                twice(&client, proxy.addr),
                [
                    (Some(HandshakeKind::Full), ok.clone()),
                    (Some(second), ok.clone())
                ],
                "TLS 1.2 only: {tls12_only}, setting {setting:?}"
            );
            assert_eq!(status_now(&proxy)["tls"][0]["session_resumption"], shown);
        }
    }
}

#[test]
fn tls_policy_errors_name_their_field() {
    let pki = Pki::new("policy");
    let a = pki.leaf(&["a.test"], Y2031);
    let b = pki.leaf(&["b.test"], Y2031);
    let files = [pki.write("a", &a), pki.write("b", &b)];
    let listener = |tls: &str| {
        format!(
            "listeners:\n  - address: \"127.0.0.1:8443\"\n    tls:\n{tls}\nupstreams:\n  app: {{ backends: [{{ address: \"127.0.0.1:9\" }}] }}\n"
        )
    };
    let errors = |yaml: &str| match faultline::Config::from_yaml(yaml) {
        Ok(_) => panic!("should be invalid:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    let both = certificates(&files.iter().collect::<Vec<_>>());
    let e = errors(&listener(&format!(
        "{both}      min_version: \"1.1\"\n      cipher_suites: [TLS13_AES_128_GCM_SHA256, TLS_NOPE]\n"
    )));
    let mut lines = e.lines();
    assert_eq!(
        lines.next(),
        Some("listeners[0].tls.min_version: \"1.1\" is not a version taken: \"1.2\" or \"1.3\"")
    );
    let suite = lines.next().expect("a second error");
    assert!(
        suite.starts_with("listeners[0].tls.cipher_suites[1]: unknown cipher suite \"TLS_NOPE\"; the crypto provider offers: ")
            && suite.contains("TLS13_AES_128_GCM_SHA256"),
        "{suite}"
    );
    let e = errors(&listener(&format!(
        "{both}      min_version: \"1.3\"\n      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"
    )));
    assert_eq!(
        e,
        "listeners[0].tls.cipher_suites: no TLS 1.3 suite, and min_version is \"1.3\""
    );
    let e = errors(&listener(&format!(
        "{both}      client_ca: \"{}\"\n",
        pki.path("missing.pem")
    )));
    assert!(
        e.starts_with("listeners[0].tls.client_ca: cannot load CA certificates from "),
        "{e}"
    );
    let e = errors(&listener(&format!("{both}      client_auth: optional\n")));
    assert_eq!(e, "listeners[0].tls.client_auth: requires client_ca");
    let e = errors(&listener(&format!(
        "      cert: \"{}\"\n      key: \"{}\"\n{both}",
        files[0].0, files[0].1
    )));
    assert_eq!(
        e,
        "listeners[0].tls.certificates: cannot be used with cert and key (list the certificate in certificates)"
    );
    let e = errors(&listener(&format!(
        "      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: \"{}\", key: \"{}\" }}\n",
        files[0].0,
        files[0].1,
        pki.path("missing.pem"),
        files[1].1
    )));
    assert!(
        e.starts_with(&format!(
            "listeners[0].tls.certificates[1].cert: cannot read {}: ",
            pki.path("missing.pem")
        )),
        "{e}"
    );
    let e = errors(&listener(
        "      unknown_sni: sometimes\n      cert: x\n      key: y\n",
    ));
    assert!(
        e.starts_with("listeners[0].tls.unknown_sni: unknown variant `sometimes`"),
        "{e}"
    );
}

#[test]
fn client_certificates_are_required_or_optional_against_the_ca() {
    let pki = Pki::new("mtls");
    let origin = Origin::start(Behavior::named("o"));
    let a = pki.leaf(&["a.test"], Y2031);
    let files = [pki.write("a", &a)];
    let good = pki.leaf(&["client.test"], Y2031);
    let rogue = pki.rogue(&["client.test"]);
    let ok = Ok((200, "origin o".to_string()));
    let base = certificates(&files.iter().collect::<Vec<_>>());
    let ca = pki.path("ca.pem");
    // Under TLS 1.3 the client's handshake is over before the server has judged its
    // certificate: a refusal shows as an alert on the first read. No HTTP page can be given.
    let exchange = |proxy: &Proxy, cert: Option<&Leaf>| {
        let config = client_config(Trust::Ca(&pki), false, cert);
        runtime().block_on(async {
            match connect(&config, proxy.addr, Some("a.test")).await {
                Err(e) => Err(format!("handshake: {e}")),
                Ok(mut tls) => get(&mut tls, "a.test", "/").await,
            }
        })
    };

    let required = start(
        &format!("{base}      client_ca: \"{ca}\"\n      client_auth: required\n"),
        &origin,
    );
    let refused = exchange(&required, None).expect_err("no certificate is refused");
    assert!(refused.contains("CertificateRequired"), "{refused}");
    required.wait_for_metric(TLS_FAILURES, |n| n == 1, "the refusal is counted");
    let refused = exchange(&required, Some(&rogue)).expect_err("a rogue certificate is refused");
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );
    required.wait_for_metric(TLS_FAILURES, |n| n == 2, "the refusal is counted");
    assert_eq!(exchange(&required, Some(&good)), ok);
    assert_eq!(status_now(&required)["tls"][0]["client_auth"], "required");

    let optional = start(
        &format!("{base}      client_ca: \"{ca}\"\n      client_auth: optional\n"),
        &origin,
    );
    assert_eq!(exchange(&optional, None), ok);
    assert_eq!(exchange(&optional, Some(&good)), ok);
    let refused = exchange(&optional, Some(&rogue)).expect_err("a rogue certificate is refused");
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );
    optional.wait_for_metric(TLS_FAILURES, |n| n == 1, "the refusal is counted");
    assert_eq!(origin.requests(), 3);
}

/// An HTTPS origin that requires a client certificate signed by `pki`'s CA, answering
/// `origin mtls` on each request of a keep-alive connection.
fn mtls_origin(pki: &Pki, leaf: &Leaf) -> SocketAddr {
    let verifier = WebPkiClientVerifier::builder(Arc::new(pki.roots()))
        .build()
        .expect("verifier");
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![leaf.cert.der().clone()],
            PrivateKeyDer::try_from(leaf.key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    crate::tls::tls_origin_with(config, "origin mtls")
}

#[test]
fn an_upstream_that_requires_a_client_certificate_gets_it() {
    let pki = Pki::new("upmtls");
    let server = pki.leaf(&["origin.test"], Y2031);
    let origin = mtls_origin(&pki, &server);
    let client_cert = pki.write("client", &pki.leaf(&["faultline.client"], Y2031));
    let (addr, admin) = (free_addr(), free_addr());
    let yaml = format!(
        "server: {{ threads: 1, ca_file: \"{}\" }}\nlisteners:\n  - {{ address: \"{addr}\" }}\nadmin: {{ address: \"{admin}\" }}\nupstreams:
  with: {{ backends: [{{ address: \"{origin}\" }}], sni: origin.test, tls: {{ client_cert: {{ cert: \"{}\", key: \"{}\" }} }} }}
  without: {{ backends: [{{ address: \"{origin}\" }}], sni: origin.test, tls: true }}
routes:
  - {{ match: {{ path_prefix: /with }}, upstream: with }}
  - {{ match: {{ path_prefix: /without }}, upstream: without }}
",
        pki.path("ca.pem"),
        client_cert.0,
        client_cert.1
    );
    let proxy = Proxy::start_yaml(addr, admin, &yaml);
    let resp = client::get(proxy.addr, "/with", &[]);
    assert_eq!((resp.status, resp.text().as_str()), (200, "origin mtls"));
    // The same origin, no certificate presented: its refusal is a gateway failure.
    let resp = client::get(proxy.addr, "/without", &[]);
    assert_eq!(resp.status, 502, "{}", resp.text());

    // A client certificate whose key is not its own is a configuration error at its path.
    let other = pki.write("other", &pki.leaf(&["faultline.client"], Y2031));
    let broken = yaml.replace(&client_cert.1, &other.1);
    let e = faultline::Config::from_yaml(&broken)
        .map(|_| ())
        .expect_err("a key that does not fit");
    assert!(
        e.to_string().starts_with(&format!(
            "upstreams.with.tls.client_cert.key: {} does not fit the certificate: ",
            other.1
        )),
        "{e}"
    );
}
