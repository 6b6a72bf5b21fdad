//! The HTTP/1.1 field values both hand-written ends read: the server side
//! ([`crate::server`]'s `h1`) and the upstream exchange
//! ([`crate::upstream`]'s `exchange`). One reading of `Content-Length` and
//! of comma-separated options, so the two ends agree (RFC 9110 §5.6.1,
//! RFC 9112 §6.3).

use http::HeaderValue;

/// A decimal number: digits only (no sign, no spaces, no list), at most 19
/// of them so it fits a `u64`.
pub(crate) fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The length that `Content-Length` values give: `Ok(None)` when there are
/// none; a value may be a list of the same number (which RFC 9112 §6.3 lets
/// a recipient accept); an error when one is not a number or two differ.
pub(crate) fn content_length<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in values {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(part.trim_ascii()).ok_or(())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether a comma-separated field value (`Connection`) holds `token`,
/// ignoring case.
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A field value as text, when it is visible ASCII (tabs allowed), as
/// `HeaderValue::to_str` has it.
pub(crate) fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[&'static str]) -> Vec<HeaderValue> {
        list.iter().map(|v| HeaderValue::from_static(v)).collect()
    }

    #[test]
    fn lengths_are_numbers_or_lists_of_one_number() {
        assert_eq!(content_length(&values(&[])), Ok(None));
        assert_eq!(content_length(&values(&["12"])), Ok(Some(12)));
        assert_eq!(content_length(&values(&["7, 7", "7"])), Ok(Some(7)));
        for bad in [
            &["5", "6"][..],
            &["5, 6"],
            &["+5"],
            &["-1"],
            &[""],
            &["five"],
            &["99999999999999999999"],
        ] {
            assert_eq!(content_length(&values(bad)), Err(()), "{bad:?}");
        }
        assert_eq!(decimal(b"7, 7"), None, "a list is not a decimal");
    }

    #[test]
    fn tokens_are_found_in_lists_whatever_their_case() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(has_token(b"close", "close"));
        assert!(!has_token(b"closed, keep-alive", "close"));
        assert!(has_token(b" Upgrade ", "upgrade"));
    }

    #[test]
    fn visible_ascii_is_what_header_values_give_as_text() {
        for value in [&b"Api-Key abc"[..], b"a\tb", b"", b"~!"] {
            let header = HeaderValue::from_bytes(value).expect("valid");
            let expected = header.to_str().ok();
            assert_eq!(visible_ascii(value), expected);
            assert!(expected.is_some());
        }
        for value in [&b"caf\xc3\xa9"[..], b"\x80"] {
            let header = HeaderValue::from_bytes(value).expect("valid");
            assert!(header.to_str().is_err(), "{value:?}");
            assert_eq!(visible_ascii(value), None, "{value:?}");
        }
        assert_eq!(visible_ascii(b"a\x7f"), None);
    }
}
