//! What a device downloads from `/trust` to trust the local CA of `--tls` once: the CA as DER
//! (`.crt`, Android and desktops) and PEM, and an iOS configuration profile carrying it. No
//! hyper here; `http/pages.rs` serves these.
//!
//! The downloads go over plain http too (a phone cannot trust https before it has the CA),
//! so a person compares the CA's fingerprint, shown on the page, in the start-up banner and
//! on the phone, before trusting it.

use base64::prelude::{Engine, BASE64_STANDARD};

use crate::tls::Ca;

/// File names the downloads are offered under.
pub const CRT_NAME: &str = "sigrelay-ca.crt";
pub const PROFILE_NAME: &str = "sigrelay-ca.mobileconfig";

/// `.mobileconfig` content type: iOS Safari offers to install the profile.
pub const PROFILE_TYPE: &str = "application/x-apple-aspen-config";
/// DER certificate content type: Android and desktops offer to install or save it.
pub const CRT_TYPE: &str = "application/x-x509-ca-cert";

/// An iOS/macOS configuration profile (an XML property list) with one payload of type
/// `com.apple.security.root` whose content is the CA's DER. Its identifiers and UUIDs derive
/// from the CA's fingerprint, so downloading it again replaces the installed profile instead
/// of adding a second one.
pub fn mobileconfig(ca: &Ca) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca.der.as_ref());
    let bytes = digest.as_ref();
    let id: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = xml_escape(&ca.name);
    let der = BASE64_STANDARD.encode(ca.der.as_ref());
    let lines: Vec<&str> = der
        .as_bytes()
        .chunks(52)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let data = lines.join("\n\t\t\t");
    let outer = uuid(&bytes[..16]);
    let inner = uuid(&bytes[16..]);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>PayloadContent</key>
	<array>
		<dict>
			<key>PayloadCertificateFileName</key>
			<string>{CRT_NAME}</string>
			<key>PayloadContent</key>
			<data>
			{data}
			</data>
			<key>PayloadDescription</key>
			<string>Lets this device trust the sigrelay server's HTTPS certificate.</string>
			<key>PayloadDisplayName</key>
			<string>{name}</string>
			<key>PayloadIdentifier</key>
			<string>org.sigrelay.ca.{id}.root</string>
			<key>PayloadType</key>
			<string>com.apple.security.root</string>
			<key>PayloadUUID</key>
			<string>{inner}</string>
			<key>PayloadVersion</key>
			<integer>1</integer>
		</dict>
	</array>
	<key>PayloadDescription</key>
	<string>Installs the certificate authority of a sigrelay server on your network, so its video call pages open over HTTPS without a warning. Compare its SHA-256 fingerprint with the one the server shows: {fingerprint}</string>
	<key>PayloadDisplayName</key>
	<string>sigrelay: {name}</string>
	<key>PayloadIdentifier</key>
	<string>org.sigrelay.ca.{id}</string>
	<key>PayloadRemovalDisallowed</key>
	<false/>
	<key>PayloadType</key>
	<string>Configuration</string>
	<key>PayloadUUID</key>
	<string>{outer}</string>
	<key>PayloadVersion</key>
	<integer>1</integer>
</dict>
</plist>
"#,
        fingerprint = ca.fingerprint,
    )
}

/// A UUID-shaped (version 4 bits set) text of 16 bytes.
fn uuid(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What `/trust/info` tells the trust page: whether there is a CA to install, its name and
/// fingerprint.
pub fn info(ca: Option<&Ca>) -> serde_json::Value {
    match ca {
        Some(ca) => serde_json::json!({
            "ca": true,
            "name": ca.name,
            "fingerprint": ca.fingerprint,
        }),
        None => serde_json::json!({ "ca": false }),
    }
}
