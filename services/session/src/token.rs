//! Session tokens and the identifiers derived from them.
//!
//! The token is the bearer secret (the `sid` cookie). Redis only ever sees
//! `hash = hex(SHA-256(token))`, so a dump of Redis cannot be replayed as cookies.
//! The public `session_id` is derived from the hash again, so that listing sessions
//! shows an id which can neither be turned back into the hash (the Redis key) nor the token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// 256 bits: far beyond guessing, and the same size as the hash that stands in for it.
const TOKEN_BYTES: usize = 32;
/// Length of a token in base64url without padding (ceil(32 * 4 / 3)).
pub const TOKEN_LEN: usize = 43;
/// Length of a public session id (hex characters).
pub const SESSION_ID_LEN: usize = 32;

/// A fresh random token, base64url without padding.
pub fn new_token() -> String {
    random_base64(TOKEN_BYTES)
}

/// A fresh random CSRF token for the HTML forms of one session.
pub fn new_csrf_token() -> String {
    random_base64(TOKEN_BYTES)
}

fn random_base64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // ThreadRng is a CSPRNG (ChaCha, reseeded from the OS).
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `token` has the shape of a token this service issues. Anything else cannot
/// be a live session, so it is rejected without asking Redis.
pub fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// hex(SHA-256(token)): the only form of the token that is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The public id of a session: the first 32 hex characters of SHA-256(hash).
pub fn session_id(hash: &str) -> String {
    let mut id = hex::encode(Sha256::digest(hash.as_bytes()));
    id.truncate(SESSION_ID_LEN);
    id
}

/// Whether `id` has the shape of a public session id (lowercase hex).
pub fn is_session_id(id: &str) -> bool {
    id.len() == SESSION_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(is_well_formed(&a), "{a}");
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(!is_well_formed("short"));
        assert!(!is_well_formed(&format!("{}=", &a[..42])));
    }

    #[test]
    fn derived_ids_differ_from_token_and_hash() {
        let token = new_token();
        let hash = token_hash(&token);
        let id = session_id(&hash);
        assert_eq!(hash.len(), 64);
        assert!(is_session_id(&id));
        assert!(!hash.contains(&id));
        assert_ne!(hash, token);
        assert!(!is_session_id("ABCDEF0123456789abcdef0123456789"));
    }
}
