//! The web pages, embedded in the binary with rust-embed (so the binary is the whole install),
//! looked up by path with their content type and ETag. No hyper here.

use std::borrow::Cow;

use rust_embed::Embed;

#[derive(Embed)]
#[folder = "assets/"]
struct Files;

/// One embedded file, ready to serve.
pub struct Asset {
    pub bytes: Cow<'static, [u8]>,
    pub content_type: String,
    /// A strong validator: the file's SHA-256, quoted.
    pub etag: String,
}

/// Looks up `path` (relative to `assets/`, no leading slash). Paths with `..`, empty segments,
/// backslashes or NUL never match: the embedded map only holds real files, and this refuses the
/// shapes that would mean something else on a disk.
pub fn get(path: &str) -> Option<Asset> {
    let suspicious = path.is_empty()
        || path.contains(['\\', '\0'])
        || path
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if suspicious {
        return None;
    }
    let file = Files::get(path)?;
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut content_type = file.metadata.mimetype().to_owned();
    if content_type.starts_with("text/") || content_type == "application/javascript" {
        content_type.push_str("; charset=utf-8");
    }
    Some(Asset {
        bytes: file.data,
        content_type,
        etag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_traversal_shapes() {
        for p in [
            "",
            "../Cargo.toml",
            "a/../index.html",
            "./index.html",
            "a//b",
            "..\\x",
            "x\0",
        ] {
            assert!(get(p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn serves_the_landing_page() {
        let page = get("index.html").expect("assets/index.html is embedded");
        assert!(page.content_type.starts_with("text/html"));
        assert!(page.etag.starts_with('"') && page.etag.len() == 34);
    }
}
