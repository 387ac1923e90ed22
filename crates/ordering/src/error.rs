//! The one error type of the crate.

use thiserror::Error;

/// An input named a group or stream the core does not know. The input was ignored: no state
/// changed and nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// No stream of `sender` in `group` was added (see
    /// [`FifoReceiver::add_sender`](crate::FifoReceiver::add_sender)).
    #[error("no stream of sender {sender:?} in group {group:?}")]
    UnknownStream {
        /// The group named by the input.
        group: String,
        /// The sender named by the input.
        sender: String,
    },
    /// The group was not opened on this side (see
    /// [`FifoSender::open`](crate::FifoSender::open)).
    #[error("group {group:?} is not open")]
    UnknownGroup {
        /// The group named by the input.
        group: String,
    },
}
