//! Validated identifiers parsed from outside: API keys, request (trace) ids.
//!
//! Parsing is the only way to build these types from untrusted input, so code
//! that holds one never re-checks its shape.

use rand::{distributions::Alphanumeric, Rng, RngCore};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

const KEY_PREFIX: &str = "wdr_";
const PUBLIC_ID_LEN: usize = 8;
const SECRET_LEN: usize = 40;
const MIN_SECRET_LEN: usize = 32;

/// Milliseconds since the Unix epoch, the unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random identifier: `len` lowercase alphanumeric characters.
pub fn new_id(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(|c| (c as char).to_ascii_lowercase())
        .collect()
}

/// Lowercase hex of `bytes`, one allocation and no per-char iteration (ids
/// are formatted several times per request).
fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex_lower(bytes, &mut out);
    out
}

/// Appends the hex of `bytes`; ids (up to 16 bytes) need no temporary string.
fn push_hex_lower(bytes: &[u8], out: &mut String) {
    let mut buf = [0u8; 32];
    let Some(hex) = buf.get_mut(..bytes.len() * 2) else {
        out.push_str(&hex::encode(bytes));
        return;
    };
    if hex::encode_to_slice(bytes, &mut *hex).is_ok() {
        out.push_str(std::str::from_utf8(hex).unwrap_or_default());
    }
}

/// The 32 lowercase hex digits of a [`RequestId`], held on the stack: the
/// request path writes an id into headers, the envelope and the log line
/// without a string of its own.
#[derive(Clone, Copy)]
pub struct RequestIdHex([u8; 32]);

impl RequestIdHex {
    /// The digits.
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The public part of an API key (`wdr_<id>_…`): safe to log and to store.
/// Held inline: an id costs no allocation to parse, copy or hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; PUBLIC_ID_LEN]);

impl KeyId {
    /// Accepts an id of the documented shape (8 lowercase alphanumerics).
    pub fn parse(s: &str) -> Option<KeyId> {
        let bytes: [u8; PUBLIC_ID_LEN] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .then_some(KeyId(bytes))
    }

    /// A fresh random id.
    fn generate() -> KeyId {
        let mut bytes = [0; PUBLIC_ID_LEN];
        for (b, c) in bytes
            .iter_mut()
            .zip(rand::thread_rng().sample_iter(&Alphanumeric))
        {
            *b = c.to_ascii_lowercase();
        }
        KeyId(bytes)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Checked ASCII when parsed or generated.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:?})", self.as_str())
    }
}

/// A clear API key, `wdr_` + 8-char public id + `_` + 32+ char secret.
/// Its secret is owned (`ApiKey`, the default) or borrowed from the text it
/// was parsed from (`ApiKey<&str>`: what a request's `Authorization` header
/// is checked as, without an allocation).
///
/// Its `Debug` never shows the secret (and there is no `Display`), so a key
/// that ends up in a log line by mistake leaks nothing.
#[derive(Clone)]
pub struct ApiKey<S = String> {
    id: KeyId,
    secret: S,
}

impl ApiKey {
    /// Generates a fresh key with a random secret.
    pub fn generate() -> ApiKey {
        let secret: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(SECRET_LEN)
            .map(char::from)
            .collect();
        ApiKey {
            id: KeyId::generate(),
            secret,
        }
    }

    /// Parses a clear key; `None` when it does not have the documented shape.
    pub fn parse(s: &str) -> Option<ApiKey> {
        ApiKey::parse_borrowed(s).map(|key| ApiKey {
            id: key.id,
            secret: key.secret.to_owned(),
        })
    }

    /// Decodes a stored hex hash into a digest for [`ApiKey::matches_digest`].
    pub fn decode_hash(stored_hex: &str) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(stored_hex, &mut out).ok()?;
        Some(out)
    }
}

impl<'a> ApiKey<&'a str> {
    /// [`ApiKey::parse`], the secret borrowed from `s`.
    pub fn parse_borrowed(s: &'a str) -> Option<ApiKey<&'a str>> {
        let rest = s.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_at_checked(PUBLIC_ID_LEN)?;
        let secret = secret.strip_prefix('_')?;
        let id = KeyId::parse(id)?;
        (secret.len() >= MIN_SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(ApiKey { id, secret })
    }
}

impl<S: AsRef<str>> ApiKey<S> {
    /// The public id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The hex SHA-256 of the secret: what the store keeps.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_ref().as_bytes()))
    }

    /// Compares this key's secret with a stored hash in constant time.
    pub fn matches_hash(&self, stored_hex: &str) -> bool {
        let Ok(stored) = hex::decode(stored_hex) else {
            return false;
        };
        let ours = Sha256::digest(self.secret.as_ref().as_bytes());
        ours.as_slice().ct_eq(stored.as_slice()).into()
    }

    /// Compares this key's secret with a stored digest (the decoded hash) in
    /// constant time; the cheap form for callers that decoded the hash once.
    pub fn matches_digest(&self, stored: &[u8; 32]) -> bool {
        let ours = Sha256::digest(self.secret.as_ref().as_bytes());
        ours.as_slice().ct_eq(stored.as_slice()).into()
    }

    /// A 128-bit SipHash-2-4 tag of the secret under `key` (a process's
    /// random key): what a cache may keep to recognise a secret it has
    /// already checked against the stored hash, at a fraction of a SHA-256.
    /// Without `key` the tag reveals nothing of the secret and cannot be
    /// matched by another secret.
    pub fn keyed_tag(&self, key: &[u8; 16]) -> [u8; 16] {
        use siphasher::sip128::{Hasher128, SipHasher24};
        use std::hash::Hasher;
        let mut h = SipHasher24::new_with_key(key);
        h.write(self.secret.as_ref().as_bytes());
        h.finish128().as_bytes()
    }

    /// The clear key, for the single place it is shown: key creation.
    pub fn expose(&self) -> String {
        format!("{KEY_PREFIX}{}_{}", self.id, self.secret.as_ref())
    }
}

impl<S> fmt::Debug for ApiKey<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({KEY_PREFIX}{}_***)", self.id)
    }
}

/// A request id: 32 lowercase hex characters, also the W3C trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 16]);

impl RequestId {
    /// A fresh random, non-zero id.
    pub fn generate() -> RequestId {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        b[0] |= 1;
        RequestId(b)
    }

    /// Parses 32 hex characters; the all-zero id is invalid (W3C).
    pub fn parse(s: &str) -> Option<RequestId> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).ok()?;
        (b != [0u8; 16] && s.bytes().all(|c| !c.is_ascii_uppercase())).then_some(RequestId(b))
    }

    /// The id as 32 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// Appends the 32 lowercase hex digits to `out`.
    pub fn push_hex(&self, out: &mut String) {
        push_hex_lower(&self.0, out);
    }

    /// The 32 lowercase hex digits, without allocating.
    pub fn hex(&self) -> RequestIdHex {
        let mut buf = [0u8; 32];
        // 16 bytes always fit 32 digits.
        let _ = hex::encode_to_slice(self.0, &mut buf);
        RequestIdHex(buf)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A W3C span id: 16 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SpanId([u8; 8]);

impl SpanId {
    /// A fresh random, non-zero span id.
    pub fn generate() -> SpanId {
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        b[0] |= 1;
        SpanId(b)
    }

    /// Parses 16 hex characters; the all-zero id is invalid.
    pub fn parse(s: &str) -> Option<SpanId> {
        let mut b = [0u8; 8];
        hex::decode_to_slice(s, &mut b).ok()?;
        (b != [0u8; 8]).then_some(SpanId(b))
    }

    /// The id as 16 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// Appends the 16 lowercase hex digits to `out`.
    pub fn push_hex(&self, out: &mut String) {
        push_hex_lower(&self.0, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_matches_its_hash() {
        let key = ApiKey::generate();
        let clear = key.expose();
        assert!(clear.starts_with("wdr_"));
        let parsed = ApiKey::parse(&clear).expect("parses");
        assert_eq!(parsed.id(), key.id());
        assert!(parsed.matches_hash(&key.secret_hash()));
        let other = ApiKey::generate();
        assert!(!other.matches_hash(&key.secret_hash()));
    }

    #[test]
    fn keyed_tags_depend_on_the_secret_and_the_key() {
        let key = ApiKey::generate();
        let same = ApiKey::parse(&key.expose()).expect("parses");
        let (k1, k2) = ([7u8; 16], [8u8; 16]);
        assert_eq!(key.keyed_tag(&k1), same.keyed_tag(&k1));
        assert_ne!(key.keyed_tag(&k1), key.keyed_tag(&k2));
        // Same public id, one character of the secret changed.
        let clear = key.expose();
        let last = if clear.ends_with('a') { 'b' } else { 'a' };
        let altered = format!("{}{last}", &clear[..clear.len() - 1]);
        let altered = ApiKey::parse(&altered).expect("parses");
        assert_eq!(altered.id(), key.id());
        assert_ne!(altered.keyed_tag(&k1), key.keyed_tag(&k1));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "wdr_",
            "wdr_abc_secret",
            "xyz_abcdefgh_0123456789012345678901234567890123",
            "wdr_ABCDEFGH_0123456789012345678901234567890123",
            "wdr_abcdefgh_short",
            "wdr_abcdefgh-0123456789012345678901234567890123",
            "wdr_abcdefgh_01234567890123456789012345678901!!",
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose()[13..]));
    }

    #[test]
    fn request_ids_are_32_hex_and_reject_zero() {
        let id = RequestId::generate();
        assert_eq!(id.to_hex().len(), 32);
        assert_eq!(RequestId::parse(&id.to_hex()), Some(id));
        assert!(RequestId::parse(&"0".repeat(32)).is_none());
        assert!(RequestId::parse("abc").is_none());
        assert!(RequestId::parse(&"A".repeat(32)).is_none());
    }
}
