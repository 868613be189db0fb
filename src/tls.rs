//! HTTPS: the certificate (given with `--cert`/`--key`, or issued by a local CA made once and
//! reused) and the rustls server configuration, with HTTP/2 offered through ALPN.
//!
//! Browsers only allow the camera in a secure context, and on a LAN that means HTTPS. A
//! self-signed certificate makes every phone warn, iOS Safari at every visit, and native apps
//! refuse it. So `--tls` makes a local certificate authority once (kept in `--tls-dir`), which
//! each device installs once from `/trust` (see `trust.rs`); the server certificate it signs
//! names `localhost`, the host name, `HOST.local`, every local address and every `--tls-name`,
//! and when the machine gains an address it is re-issued for the old names plus the new ones,
//! by the same CA, so nothing has to be installed again.

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
    /// Issued by a local CA, both made on first use and kept in `dir`; `names` are named
    /// in the certificate besides this machine's own (`--tls-name`).
    Generated { dir: PathBuf, names: Vec<String> },
}

/// The local CA that signs a generated certificate, as devices download it from `/trust`.
#[derive(Debug, Clone)]
pub struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// SHA-256 of the DER, `AB:CD:...`: what a person compares on the phone.
    pub fingerprint: String,
    /// Its common name, as phones list it.
    pub name: String,
}

/// The loaded TLS setup, ready for the accept loop.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AB:CD:...`, for people to compare with the browser's.
    pub fingerprint: String,
    /// The leaf certificate, DER.
    pub certificate: CertificateDer<'static>,
    /// What happened at start-up, for the banner: "generated", "reused" or the file given.
    pub origin: String,
    /// The local CA of a generated certificate; `None` with `--cert`/`--key`.
    pub ca: Option<Ca>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Tls {
    /// What a client must trust to reach us (tests trust exactly this): the local CA, or
    /// the certificate given with `--cert` (self-signed or not, it is taken as an anchor).
    pub fn anchor(&self) -> CertificateDer<'static> {
        self.ca
            .as_ref()
            .map_or_else(|| self.certificate.clone(), |ca| ca.der.clone())
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
    let (chain, key, origin, ca) = match source {
        CertSource::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| TlsError(format!("--key {}: {e}", key.display())))?;
            (chain, key, format!("from {}", cert.display()), None)
        }
        CertSource::Generated { dir, names } => {
            let (chain, key, origin, ca) = generated(dir, names)?;
            (chain, key, origin, Some(ca))
        }
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
        ca,
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

/// The files of a generated setup in `--tls-dir`.
struct Files {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    ca_name: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    names: PathBuf,
    expires: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Files {
        Files {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            ca_name: dir.join("ca-name.txt"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            names: dir.join("names.txt"),
            expires: dir.join("expires.txt"),
        }
    }
}

/// The server certificate's lifetime. Apple platforms refuse a TLS certificate valid for
/// more than 825 days even under a CA the user installed; it is re-issued (by the same CA,
/// so nobody installs anything again) once fewer than [`RENEW_BEFORE_DAYS`] are left.
const LEAF_DAYS: i64 = 800;
const RENEW_BEFORE_DAYS: i64 = 30;

/// The local CA: made once, kept in `--tls-dir`, and installed once by every device (from
/// `/trust`); it signs the server certificate for whatever names the machine has.
struct Authority {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, bytes)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    TlsError(e.to_string())
}

/// The CA's fixed parts: signing a certificate needs its subject name and key identifier
/// method exactly as they were, and both are rebuilt from this and the stored name.
fn authority_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "sigrelay");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Authority {
    /// The stored CA, or `None` when there is none (a fresh directory, or one from before
    /// the CA, holding only a self-signed certificate).
    fn load(files: &Files) -> Result<Option<Authority>, TlsError> {
        if !(files.ca_cert.exists() && files.ca_key.exists() && files.ca_name.exists()) {
            return Ok(None);
        }
        let key = rcgen::KeyPair::from_pem(&read(&files.ca_key)?)
            .map_err(|e| TlsError(format!("{}: {e}", files.ca_key.display())))?;
        let name = read(&files.ca_name)?.trim().to_owned();
        Ok(Some(Authority {
            params: authority_params(&name),
            key,
            pem: read(&files.ca_cert)?,
        }))
    }

    /// A new CA, named after this machine so a phone holding several tells them apart.
    fn create(files: &Files) -> Result<Authority, TlsError> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let name = format!("sigrelay local CA {host} {stamp}");
        let mut params = authority_params(&name);
        validity(&mut params, -1, 3650);
        let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        write_private(&files.ca_key, key.serialize_pem().as_bytes())?;
        write(&files.ca_cert, cert.pem().as_bytes())?;
        write(&files.ca_name, format!("{name}\n").as_bytes())?;
        Ok(Authority {
            params: authority_params(&name),
            key,
            pem: cert.pem(),
        })
    }

    fn der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.pem.as_bytes())
            .map_err(|e| TlsError(format!("the CA certificate: {e}")))
    }
}

/// The calendar day `days` from today (negative: ago), UTC, as (year, month, day); certificate
/// dates are whole days here, which is all a lifetime of months needs.
fn day_from_now(days: i64) -> (i32, u8, u8) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = unix_now().div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Sets a certificate's validity from `from` days to `to` days from today.
fn validity(params: &mut rcgen::CertificateParams, from: i64, to: i64) {
    let (y, m, d) = day_from_now(from);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = day_from_now(to);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Reuses `dir/cert.pem` + `dir/key.pem` when they cover every current name and are not
/// near their end; otherwise issues a new server certificate, signed by the local CA, for the
/// old names plus the current ones (and says so). A directory from before the CA (a
/// self-signed `cert.pem` and no `ca.pem`) gets a CA and a new certificate.
fn generated(
    dir: &Path,
    extra_names: &[String],
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        String,
        Ca,
    ),
    TlsError,
> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    let files = Files::in_dir(dir);
    let mut current = local_names();
    current.extend(extra_names.iter().cloned());
    let stored: BTreeSet<String> = std::fs::read_to_string(&files.names)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let expires: i64 = std::fs::read_to_string(&files.expires)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let fresh = expires - unix_now() > RENEW_BEFORE_DAYS * 86_400;
    let (authority, new_ca) = match Authority::load(&files)? {
        Some(authority) => (authority, false),
        None => (Authority::create(&files)?, true),
    };
    let ca_der = authority.der()?;
    let ca = Ca {
        fingerprint: fingerprint(&ca_der),
        pem: authority.pem.clone(),
        der: ca_der.clone(),
        name: read(&files.ca_name)?.trim().to_owned(),
    };
    if !new_ca && fresh && files.cert.exists() && files.key.exists() && current.is_subset(&stored) {
        let chain = read_chain(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| TlsError(format!("{}: {e}", files.key.display())))?;
        return Ok((chain, key, format!("reused {}", files.cert.display()), ca));
    }

    let names: BTreeSet<String> = stored.union(&current).cloned().collect();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
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
        .push(rcgen::DnType::CommonName, "sigrelay");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, -1, LEAF_DAYS);
    let key_pair = rcgen::KeyPair::generate().map_err(rcgen_error)?;
    let issuer = rcgen::Issuer::from_params(&authority.params, &authority.key);
    let cert = params.signed_by(&key_pair, &issuer).map_err(rcgen_error)?;

    write_private(&files.key, key_pair.serialize_pem().as_bytes())?;
    // The chain served: the certificate, then the CA (a client that has the CA installed
    // needs only the first; `openssl verify` and curious people see the whole path).
    write(
        &files.cert,
        format!("{}{}", cert.pem(), authority.pem).as_bytes(),
    )?;
    let list: String = names.iter().map(|n| format!("{n}\n")).collect();
    write(&files.names, list.as_bytes())?;
    write(
        &files.expires,
        format!("{}\n", unix_now() + LEAF_DAYS * 86_400).as_bytes(),
    )?;

    let key = PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|e| TlsError(e.into()))?;
    let what = if new_ca && !stored.is_empty() {
        "replaced the old self-signed certificate with one from a new local CA:"
    } else if new_ca {
        "generated a local CA and"
    } else if !current.is_subset(&stored) {
        "re-issued for new addresses"
    } else {
        "renewed"
    };
    Ok((
        vec![cert.der().clone(), ca_der],
        key,
        format!("{what} {}", files.cert.display()),
        ca,
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    // `mode` applies only to a new file: one left by an older version keeps its own.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| TlsError(format!("cannot restrict {}: {e}", path.display())))?;
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
