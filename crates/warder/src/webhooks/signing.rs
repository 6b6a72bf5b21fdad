//! Standard Webhooks signatures and the sealing of webhook secrets at rest.
//!
//! A user's secret is `whsec_` + base64 of 32 random bytes; the HMAC key is
//! the decoded bytes. The signature of a message is
//! `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), one per
//! valid secret, space-separated. Secrets must be recoverable to sign, so the
//! store keeps them sealed with ChaCha20-Poly1305 under a server key, never
//! in clear; nothing here logs a secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::Sha256;
use std::path::Path;

const SECRET_PREFIX: &str = "whsec_";
const SEALED_PREFIX: &str = "v1:";

/// A webhook signing secret (`whsec_…`); `Debug` hides it.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(whsec_***)")
    }
}

impl WebhookSecret {
    /// A fresh random secret.
    pub fn generate() -> WebhookSecret {
        let mut b = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        WebhookSecret(b)
    }

    /// Parses `whsec_<base64>` (the prefix is optional, as in the spec's libraries).
    pub fn parse(s: &str) -> Option<WebhookSecret> {
        let b64 = s.strip_prefix(SECRET_PREFIX).unwrap_or(s);
        B64.decode(b64)
            .ok()
            .filter(|b| !b.is_empty())
            .map(WebhookSecret)
    }

    /// The clear `whsec_…` text, for the single place it is shown.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per secret.
pub fn signature_header(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why the sealing key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The configured key is not base64 of 32 bytes.
    #[error("async_queue.secrets_key must be base64 of 32 bytes")]
    BadKey,
    /// The key file could not be read or written.
    #[error("secrets key file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Seals and opens webhook secrets with the server key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    /// A sealer over 32 key bytes.
    pub fn new(key: &[u8]) -> Result<Sealer, SealError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| SealError::BadKey)?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
        })
    }

    /// The configured key (base64), or the key file in `data_dir`, created
    /// with a random key on first use.
    pub fn from_config(configured: Option<&str>, data_dir: &Path) -> Result<Sealer, SealError> {
        if let Some(k) = configured {
            let bytes = B64.decode(k.trim()).map_err(|_| SealError::BadKey)?;
            return Sealer::new(&bytes);
        }
        let path = data_dir.join("secrets.key");
        let file_err = |source| SealError::File {
            path: path.display().to_string(),
            source,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(file_err)?;
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                let text = B64.encode(key);
                write_private(&path, &text).map_err(file_err)?;
                text
            }
            Err(e) => return Err(file_err(e)),
        };
        let bytes = B64.decode(text.trim()).map_err(|_| SealError::BadKey)?;
        Sealer::new(&bytes)
    }

    /// Encrypts a secret for storage.
    pub fn seal(&self, secret: &WebhookSecret) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut data = secret.0.clone();
        if self
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .is_err()
        {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    /// Decrypts a stored secret; `None` if it was sealed with another key.
    pub fn open(&self, sealed: &str) -> Option<WebhookSecret> {
        let raw = B64.decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let clear = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        Some(WebhookSecret(clear.to_vec()))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret =
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn several_secrets_give_several_signatures() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        let h = signature_header(&[a.clone(), b.clone()], "id", 1, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts, vec![a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}")]);
    }

    #[test]
    fn sealing_round_trips_and_hides_the_secret() {
        let sealer = Sealer::new(&[7u8; 32]).expect("key");
        let secret = WebhookSecret::generate();
        let sealed = sealer.seal(&secret);
        assert!(!sealed.contains(&secret.expose()[6..]));
        let opened = sealer.open(&sealed).expect("opens");
        assert_eq!(opened.expose(), secret.expose());
        let other = Sealer::new(&[8u8; 32]).expect("key");
        assert!(other.open(&sealed).is_none());
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = tempfile::tempdir().expect("dir");
        let a = Sealer::from_config(None, dir.path()).expect("created");
        let b = Sealer::from_config(None, dir.path()).expect("read back");
        let secret = WebhookSecret::generate();
        assert!(b.open(&a.seal(&secret)).is_some());
    }
}
