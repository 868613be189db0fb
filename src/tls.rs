//! HTTPS: the certificate (given with `--cert`/`--key`, or generated once and reused) and the
//! rustls server configuration, with HTTP/2 offered through ALPN.
//!
//! Browsers only allow the camera in a secure context, and on a LAN that means HTTPS. A
//! self-signed certificate is the zero-setup answer: each browser warns once, and the warning
//! stays dismissed only if the certificate stays the same, so it is stored and reused rather
//! than made anew at every start. It names `localhost`, the host name, `HOST.local` and every
//! local address; when the machine gains an address the certificate is re-issued for the old
//! names plus the new ones.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where the certificate comes from, as configured.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given by the user.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated on first use and kept in this directory.
    Generated { dir: PathBuf },
}

/// The loaded TLS setup, ready for the accept loop.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AB:CD:...`, for people to compare with the browser's.
    pub fingerprint: String,
    /// The leaf certificate, DER (tests trust exactly this).
    pub certificate: CertificateDer<'static>,
    /// What happened at start-up, for the banner: "generated", "reused" or the file given.
    pub origin: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Why TLS could not be set up; the text names the file and what is wrong with it.
#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The default directory for a generated certificate: `$XDG_DATA_HOME/sigrelay`, else
/// `~/.local/share/sigrelay`, else `./.sigrelay`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sigrelay");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/sigrelay");
    }
    PathBuf::from(".sigrelay")
}

/// Loads or generates the certificate and builds the server configuration.
pub fn load(source: &CertSource) -> Result<Tls, TlsError> {
    let (chain, key, origin) = match source {
        CertSource::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| TlsError(format!("--key {}: {e}", key.display())))?;
            (chain, key, format!("from {}", cert.display()))
        }
        CertSource::Generated { dir } => generated(dir)?,
    };
    let certificate = chain[0].clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key do not work together: {e}")))?;
    // HTTP/2 first: over HTTP/1.1 a browser allows only 6 open EventSources per site.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        fingerprint: fingerprint(&certificate),
        certificate,
        origin,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(chain)
}

/// The names this machine is reached by right now.
fn local_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if !host.is_empty() && host.parse::<IpAddr>().is_err() {
        names.insert(host.clone());
        if !host.contains('.') {
            names.insert(format!("{host}.local"));
        }
    }
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        names.insert(iface.ip().to_string());
    }
    names
}

/// Reuses `dir/cert.pem` + `dir/key.pem` when they cover every current name; otherwise issues a
/// new certificate for the old names plus the current ones (and says so).
fn generated(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let names_path = dir.join("names.txt");
    let current = local_names();
    let stored: BTreeSet<String> = std::fs::read_to_string(&names_path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    if cert_path.exists() && key_path.exists() && current.is_subset(&stored) {
        let chain = read_chain(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| TlsError(format!("{}: {e}", key_path.display())))?;
        return Ok((chain, key, format!("reused {}", cert_path.display())));
    }

    let names: BTreeSet<String> = stored.union(&current).cloned().collect();
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError(e.to_string()))?;
    for name in &names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| TlsError(format!("host name {name:?}: {e}")))?,
            ),
        });
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sigrelay (self-signed)");
    // Lifetime caps apply to publicly trusted certificates only; a self-signed one the user
    // accepted lives as long as it says, and it should outlive the classroom's semester.
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key_pair = rcgen::KeyPair::generate().map_err(|e| TlsError(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError(e.to_string()))?;

    std::fs::create_dir_all(dir)
        .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| TlsError(format!("cannot write {}: {e}", cert_path.display())))?;
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    std::fs::write(&names_path, list)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", names_path.display())))?;

    let key = PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|e| TlsError(e.into()))?;
    let what = if stored.is_empty() {
        "generated"
    } else {
        "re-issued for new addresses"
    };
    Ok((
        vec![cert.der().clone()],
        key,
        format!("{what} {}", cert_path.display()),
    ))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

/// `AB:CD:...`: SHA-256 of the DER certificate, as browsers show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
