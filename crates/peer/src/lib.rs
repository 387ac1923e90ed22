//! The peer daemon of the group messenger: joins groups, multicasts and delivers messages in
//! FIFO or total order through the `ordering` core.
//!
//! Not built yet: this crate holds its command line only. Until then the binary says so and
//! exits with an error.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
