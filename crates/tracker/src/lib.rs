//! The tracker daemon of the group messenger: the registry of members and groups, the
//! control protocol, and failure detection.
//!
//! Not built yet: this crate holds its command line only, so that `cargo run -p tracker --
//! --help` shows what it will take. Until then the binary says so and exits with an error.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
