//! The plain-publish head check (`http::fast`): any bytes. Nothing may panic, and a
//! head taken as plain — served outside hyper — has exactly one `Content-Length`, of digits,
//! within the limit, no `Transfer-Encoding`, `Expect` or `Upgrade`, and lies within the input.
//! Anything else must be left to hyper.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigrelay::http::fast::plain_publish_head;

const MAX_BODY: usize = 65_536;

fuzz_target!(|data: &[u8]| {
    let Some((head_len, content_length, _close)) = plain_publish_head(data, MAX_BODY) else {
        return;
    };
    assert!(head_len <= data.len());
    assert!(content_length <= MAX_BODY);
    let head = String::from_utf8_lossy(&data[..head_len]).to_ascii_lowercase();
    // Empty lines before the request line are skipped (RFC 9112 2.2), as hyper does.
    let head = head.trim_start_matches(['\r', '\n']);
    assert!(head.starts_with("post /channel/send/"), "{head:?}");
    let fields: Vec<(&str, &str)> = head
        .split('\n')
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    let lengths: Vec<&str> = fields
        .iter()
        .filter(|(name, _)| *name == "content-length")
        .map(|(_, value)| *value)
        .collect();
    assert!(
        lengths.len() == 1 && lengths[0].bytes().all(|b| b.is_ascii_digit()),
        "{head:?}"
    );
    assert_eq!(
        lengths[0].parse::<usize>().ok(),
        Some(content_length),
        "{head:?}"
    );
    for banned in ["transfer-encoding", "expect", "upgrade"] {
        assert!(fields.iter().all(|(name, _)| *name != banned), "{head:?}");
    }
});
