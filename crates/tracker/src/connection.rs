//! One TCP control connection: requests framed out of the byte stream, replies written back
//! without ever blocking, and the closing rules of old and new clients.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use proto::{Envelope, JsonFramer, Reply};

use crate::registry::Via;
use crate::stats::{Stats, bump};
use crate::store::Store;

/// Replies waiting to be written beyond which the connection stops reading: a client that
/// sends requests without reading the answers is slowed down, not buffered without bound.
const OUT_LIMIT: usize = 1 << 20;

/// How long a closing connection waits for its client to close its side.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// What the event loop does with a connection after it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Keep it; `wants_write` says whether replies are waiting for the socket.
    Keep { wants_write: bool },
    /// Drop it now.
    Close,
}

#[derive(Debug)]
enum Phase {
    Open,
    /// Our side is shut down after the last reply; discard input until the client closes
    /// (dropping a socket with unread input would reset it and could lose the reply).
    Draining {
        until: Instant,
    },
}

/// A client's connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    framer: JsonFramer,
    out: Vec<u8>,
    out_pos: usize,
    /// The client announced the newer protocol: it keeps the connection for more requests.
    /// The report's client sends one request and expects the tracker to close.
    persistent: bool,
    served: u64,
    close_after_write: bool,
    phase: Phase,
    pub(crate) last_active: Instant,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        max_request_len: usize,
        now: Instant,
    ) -> Self {
        Self {
            stream,
            peer,
            framer: JsonFramer::new(max_request_len),
            out: Vec::new(),
            out_pos: 0,
            persistent: false,
            served: 0,
            close_after_write: false,
            phase: Phase::Open,
            last_active: now,
        }
    }

    /// Whether the connection is past its deadline: idle too long, or done draining.
    pub(crate) fn expired(&self, now: Instant, idle_timeout: Duration) -> bool {
        match self.phase {
            Phase::Open => now.saturating_duration_since(self.last_active) >= idle_timeout,
            Phase::Draining { until } => now >= until,
        }
    }

    /// Reads what the socket has, answers every complete request, and writes what it can.
    /// `buf` is scratch space for reading, lent by the event loop.
    pub(crate) fn pump(
        &mut self,
        now: Instant,
        store: &mut Store,
        stats: &Stats,
        max_request_len: usize,
        buf: &mut [u8],
    ) -> Status {
        loop {
            if self.flush().is_err() {
                return Status::Close;
            }
            let pending = self.out.len() - self.out_pos;
            if let Phase::Draining { .. } = self.phase {
                return match self.stream.read(buf) {
                    Ok(0) => Status::Close,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        Status::Keep { wants_write: false }
                    }
                    Err(_) => Status::Close,
                };
            }
            if pending > 0 && (pending >= OUT_LIMIT || self.close_after_write) {
                return Status::Keep { wants_write: true };
            }
            if self.close_after_write {
                // Everything is written. If the client sent nothing more, close at once (a
                // clean FIN after the reply); otherwise close our side and discard its input
                // until it closes, so the reply is not lost to a reset.
                let _ = self.stream.shutdown(Shutdown::Write);
                match self.stream.read(buf) {
                    Ok(0) => return Status::Close,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Close,
                    _ => {}
                }
                self.phase = Phase::Draining {
                    until: now + DRAIN_TIME,
                };
                continue;
            }
            match self.stream.read(buf) {
                Ok(0) => {
                    // The client closed its side: answer what it sent, then close.
                    self.close_after_write = true;
                }
                Ok(n) => {
                    self.last_active = now;
                    self.framer.push(&buf[..n]);
                    self.answer(now, store, stats, max_request_len);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Status::Keep {
                        wants_write: pending > 0,
                    };
                }
                Err(_) => return Status::Close,
            }
        }
    }

    /// Answers every complete request in the framer.
    fn answer(&mut self, now: Instant, store: &mut Store, stats: &Stats, max_request_len: usize) {
        loop {
            let reply = match self.framer.next_frame() {
                Ok(Some(frame)) => match Envelope::decode_limited(frame, max_request_len) {
                    Ok(envelope) => {
                        if envelope.proto.is_some() && !self.persistent {
                            // Replies of a long-lived connection must not wait for Nagle.
                            let _ = self.stream.set_nodelay(true);
                            self.persistent = true;
                        }
                        let reply = store.handle_envelope(now, envelope, Via::Tcp(self.peer.ip()));
                        if !reply.success {
                            bump(&stats.failed_requests);
                        }
                        reply
                    }
                    Err(e) => {
                        log::debug!("{}: bad request: {e}", self.peer);
                        bump(&stats.bad_requests);
                        Reply::failure(format!("bad request: {e}"))
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    // The stream cannot be resynchronised: answer, then close.
                    log::debug!("{}: unreadable stream: {e}", self.peer);
                    bump(&stats.bad_requests);
                    self.close_after_write = true;
                    Reply::failure(format!("bad request: {e}; closing the connection"))
                }
            };
            bump(&stats.requests);
            self.served += 1;
            // Writing a Reply into memory cannot fail.
            let _ = serde_json::to_writer(&mut self.out, &reply);
            self.out.push(b'\n');
            if self.close_after_write {
                break;
            }
        }
        if !self.persistent && self.served > 0 {
            self.close_after_write = true;
        }
    }

    /// Writes pending replies until the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }
}
