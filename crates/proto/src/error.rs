//! The one error type of the crate: what was wrong with bytes that failed to decode.

use thiserror::Error;

/// Why a message could not be decoded (or, for [`Error::Oversized`], encoded).
///
/// Decoding never changes any state, so every variant means only "this input was rejected";
/// the caller answers with `Success: false` or logs and counts a dropped datagram.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The input is longer than the limit; it was rejected before any parsing.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Length of the rejected input in bytes.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// The bytes are not well-formed JSON (or are cut short).
    #[error("malformed JSON: {detail}")]
    Syntax {
        /// The parser's description, with the position.
        detail: String,
    },
    /// A required key is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The key, spelled as on the wire (`Group`, `Counter`, ...).
        field: String,
    },
    /// A key holds a value of the wrong JSON type (a string where a number belongs, ...).
    #[error("wrong type: {detail}")]
    WrongType {
        /// The parser's description of the mismatch.
        detail: String,
    },
    /// The `Type` code is not one this version knows; old peers ignore such messages too.
    #[error("unknown Type code {code}")]
    UnknownType {
        /// The code that was received.
        code: i64,
    },
    /// A value has the right type but is out of range (a port above 65535, ...).
    #[error("invalid value: {detail}")]
    Invalid {
        /// What was out of range.
        detail: String,
    },
}

/// Prefix of the serde error text our own deserializers emit for an unknown `Type` code,
/// so that [`classify`] can recover the code as a typed [`Error::UnknownType`].
pub(crate) const UNKNOWN_TYPE_PREFIX: &str = "unknown Type code ";

/// Turns a `serde_json` error into the typed [`Error`] that says what was wrong.
pub(crate) fn classify(err: serde_json::Error) -> Error {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => Error::Syntax {
            detail: err.to_string(),
        },
        Category::Data => {
            let text = err.to_string();
            if let Some(rest) = text.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or_default().to_owned();
                Error::MissingField { field }
            } else if let Some(rest) = text.strip_prefix(UNKNOWN_TYPE_PREFIX) {
                let digits: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '-')
                    .collect();
                match digits.parse() {
                    Ok(code) => Error::UnknownType { code },
                    Err(_) => Error::Invalid { detail: text },
                }
            } else if text.starts_with("invalid type") || text.starts_with("invalid length") {
                Error::WrongType { detail: text }
            } else {
                Error::Invalid { detail: text }
            }
        }
    }
}

/// Rejects `bytes` longer than `max` before any parsing is attempted.
pub(crate) fn check_len(bytes: &[u8], max: usize) -> Result<(), Error> {
    if bytes.len() > max {
        Err(Error::Oversized {
            len: bytes.len(),
            max,
        })
    } else {
        Ok(())
    }
}

/// Rejects a top-level JSON array: serde accepts `[..]` for a struct, but on our wire every
/// message is an object, and `[1, {}]` must not pass for a request.
pub(crate) fn reject_array(bytes: &[u8]) -> Result<(), Error> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Err(Error::WrongType {
            detail: "a JSON array where a message object was expected".into(),
        }),
        _ => Ok(()),
    }
}
