//! The sequencer daemon of the group messenger: gives each group's messages one total order
//! through the `ordering` core's `Sequencer`.
//!
//! Not built yet: this crate holds its command line only. Until then the binary says so and
//! exits with an error.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
