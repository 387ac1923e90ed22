//! Group keys: where they come from (a key file, a passphrase, the random generator) and
//! what is derived from them.

use std::fmt;
use std::path::Path;

use hkdf::Hkdf;
use rand::RngCore as _;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of a group key.
pub const KEY_LEN: usize = 32;

/// Why a group key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error(
        "{what}: a group key file holds 64 hexadecimal digits (32 bytes), for example made by `openssl rand -hex 32`"
    )]
    NotAKey {
        /// The file, or what was given.
        what: String,
    },
    /// The passphrase is empty.
    #[error("{what}: the passphrase is empty")]
    EmptyPassphrase {
        /// The file, or what was given.
        what: String,
    },
    /// The key-derivation function refused its input.
    #[error("cannot derive a key from the passphrase: {0}")]
    Derive(String),
}

/// Names a group key without revealing it: the first 8 bytes of a value derived from the
/// key (HKDF-SHA256, label `groupcast key id v1`). A sealed datagram carries it in clear, so
/// that a receiver finds the key to open it with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The secret every member of a sealed group holds: 32 bytes, from a key file, a passphrase
/// (through Argon2id) or the random generator. Zeroed when dropped; never shown by `Debug`.
///
/// The key itself seals nothing: datagrams are sealed with a subkey derived from it
/// ([`Sealer`](crate::Sealer)), the tracker is shown another value derived from it
/// ([`tracker_token`](Self::tracker_token)), and neither reveals the key.
#[derive(Clone)]
pub struct GroupKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey({})", self.id())
    }
}

impl GroupKey {
    /// A key of 32 bytes as given.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A new random key (the operating system's generator).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self { bytes }
    }

    /// A key written as 64 hexadecimal digits (white space around them is ignored).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let not_a_key = || KeyError::NotAKey {
            what: "the key given".to_owned(),
        };
        let digits = text.trim().as_bytes();
        if digits.len() != 2 * KEY_LEN {
            return Err(not_a_key());
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or_else(not_a_key)?;
            let low = hex_digit(pair[1]).ok_or_else(not_a_key)?;
            *byte = high << 4 | low;
        }
        Ok(Self { bytes })
    }

    /// The key as 64 hexadecimal digits, as a key file holds it.
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key derived from `passphrase` for `group` with Argon2id (19 MiB, 2 passes, one
    /// lane: the parameters recommended for interactive logins; about 50 ms here). The salt
    /// is the group's name with a fixed label, so every member derives the same key from the
    /// same passphrase and an attacker's guessing work serves one group name only.
    pub fn from_passphrase(group: &str, passphrase: &str) -> Result<Self, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase {
                what: format!("group {group}"),
            });
        }
        let params = argon2::Params::new(19 * 1024, 2, 1, Some(KEY_LEN))
            .map_err(|e| KeyError::Derive(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = format!("groupcast sealed group v1: {group}");
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase.as_bytes(), salt.as_bytes(), bytes.as_mut())
            .map_err(|e| KeyError::Derive(e.to_string()))?;
        Ok(Self { bytes })
    }

    /// Reads a key file: 64 hexadecimal digits. Warns (once, in the log) when the file can
    /// be read by others than its owner.
    pub fn read_key_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_private(path)?;
        Self::from_hex(&text).map_err(|_| KeyError::NotAKey {
            what: path.display().to_string(),
        })
    }

    /// Reads a passphrase file (its first line, without the line break) and derives
    /// `group`'s key from it ([`from_passphrase`](Self::from_passphrase)).
    pub fn read_passphrase_file(group: &str, path: &Path) -> Result<Self, KeyError> {
        let text = read_private(path)?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(KeyError::EmptyPassphrase {
                what: path.display().to_string(),
            });
        }
        Self::from_passphrase(group, line)
    }

    /// The key's public name (see [`KeyId`]).
    pub fn id(&self) -> KeyId {
        let mut id = [0u8; 8];
        self.derive(b"groupcast key id v1", &mut id);
        KeyId(id)
    }

    /// What a member shows the tracker to join `group` or list its members: 32 bytes
    /// derived from the key and the group's name (HKDF-SHA256), in hexadecimal. The first
    /// member to join a sealed group sets it; the tracker compares later ones with it in
    /// constant time. It does not reveal the key, so a tracker (or whoever reads its link)
    /// that learns it can neither read nor forge the group's datagrams.
    pub fn tracker_token(&self, group: &str) -> String {
        let mut token = [0u8; 32];
        let mut info = b"groupcast tracker token v1\0".to_vec();
        info.extend_from_slice(group.as_bytes());
        self.derive(&info, &mut token);
        token.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Derives `out.len()` bytes for the purpose `label` (HKDF-SHA256, no salt).
    pub(crate) fn derive(&self, label: &[u8], out: &mut [u8]) {
        Hkdf::<Sha256>::new(None, self.bytes.as_ref())
            .expand(label, out)
            .expect("HKDF-SHA256 gives up to 8,160 bytes");
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "{} can be read by others than its owner; `chmod 600` it",
                path.display()
            );
        }
    }
    Ok(Zeroizing::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_from_its_hex_and_names_itself_without_showing_itself() {
        let key = GroupKey::generate();
        let again = GroupKey::from_hex(&format!("  {}\n", key.to_hex())).expect("valid");
        assert_eq!(again.id(), key.id());
        assert_ne!(GroupKey::generate().id(), key.id());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            assert!(GroupKey::from_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_passphrase_gives_every_member_the_same_key_for_one_group_only() {
        let a = GroupKey::from_passphrase("books", "correct horse").expect("derives");
        let b = GroupKey::from_passphrase("books", "correct horse").expect("derives");
        let other_group = GroupKey::from_passphrase("films", "correct horse").expect("derives");
        let other_phrase = GroupKey::from_passphrase("books", "correct horsf").expect("derives");
        assert_eq!(a.to_hex(), b.to_hex());
        assert_ne!(a.to_hex(), other_group.to_hex());
        assert_ne!(a.to_hex(), other_phrase.to_hex());
        assert!(GroupKey::from_passphrase("books", "").is_err());
    }

    #[test]
    fn key_and_passphrase_files_are_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let key = GroupKey::generate();
        let key_file = dir.path().join("books.key");
        std::fs::write(&key_file, format!("{}\n", key.to_hex())).expect("write");
        assert_eq!(
            GroupKey::read_key_file(&key_file).expect("reads").id(),
            key.id()
        );
        let phrase_file = dir.path().join("books.pass");
        std::fs::write(&phrase_file, "correct horse\nignored\n").expect("write");
        assert_eq!(
            GroupKey::read_passphrase_file("books", &phrase_file)
                .expect("reads")
                .id(),
            GroupKey::from_passphrase("books", "correct horse")
                .expect("derives")
                .id()
        );
        let error = GroupKey::read_key_file(&phrase_file).expect_err("not a key");
        assert!(error.to_string().contains("books.pass"), "{error}");
        assert!(GroupKey::read_key_file(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn the_tracker_token_depends_on_key_and_group_and_is_not_the_key() {
        let key = GroupKey::generate();
        let token = key.tracker_token("books");
        assert_eq!(token.len(), 64);
        assert_eq!(token, key.tracker_token("books"));
        assert_ne!(token, key.tracker_token("films"));
        assert_ne!(token, GroupKey::generate().tracker_token("books"));
        assert_ne!(token, key.to_hex());
    }
}
