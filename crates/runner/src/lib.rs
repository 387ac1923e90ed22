//! The experiment runner: brings up a whole local system — tracker, sequencer and peers as
//! separate processes from the same build — runs the report's experiments on it, collects
//! every peer's measurements, and stops everything it started.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod baseline;
pub mod experiments;
pub mod lan;
pub mod plot;
pub mod system;
