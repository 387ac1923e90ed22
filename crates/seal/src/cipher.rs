//! The AEAD: AES-256-GCM, from `ring` (its assembly uses the AES and carry-less multiply
//! instructions, and is several times faster here than the portable crates for a
//! 16 KiB bundle).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// One sender's AES-256-GCM key, ready to seal or open.
#[derive(Clone)]
pub(crate) struct Cipher(LessSafeKey);

impl Cipher {
    /// The cipher of a 32-byte key.
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes 32 bytes");
        Self(LessSafeKey::new(unbound))
    }

    /// Encrypts `body` in place; returns the tag.
    pub(crate) fn seal(&self, nonce: [u8; 12], aad: &[u8], body: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .expect("AES-256-GCM seals any length a datagram can have");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `sealed` (ciphertext, then tag) in place, leaving the plain text in it;
    /// false, and `sealed` of no use, if it is not authentic.
    pub(crate) fn open(&self, nonce: [u8; 12], aad: &[u8], sealed: &mut Vec<u8>) -> bool {
        let opened = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
            .map(|plain| plain.len());
        match opened {
            Ok(len) => {
                sealed.truncate(len);
                true
            }
            Err(_) => false,
        }
    }
}
