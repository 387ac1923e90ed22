//! The connection to the tracker, inside an event loop: requests are queued and answered in
//! order over one persistent connection (marked with the newer protocol's `Proto`), and a
//! lost connection is retried with backoff. Nothing here blocks.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use proto::{Envelope, JsonFramer, PROTOCOL_VERSION, Reply, Request, Secret};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What happened on the link; drain with [`TrackerLink::poll_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent<P> {
    /// The connection is up (again): register, and rejoin groups if this is a reconnection.
    Connected,
    /// The connection was lost; it is being retried (at the next tracker, if there are
    /// several).
    Disconnected {
        /// The tracker it was to.
        tracker: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The tracker answered the request made for `P`.
    Reply(P, Reply),
    /// The request made for `P` got no answer: the connection was lost first.
    Lost(P),
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    connected: bool,
    out: Vec<u8>,
    framer: JsonFramer,
}

/// A persistent, self-healing connection to the tracker. `P` is what the caller wants to
/// remember about each request (why it was made), handed back with its reply.
#[derive(Debug)]
pub struct TrackerLink<P> {
    /// The trackers to try, in turn (several share one registry), and the one in use.
    addrs: Vec<SocketAddr>,
    current: usize,
    token: Token,
    conn: Option<Connection>,
    pending: VecDeque<P>,
    retry_at: Option<Instant>,
    backoff: Duration,
    events: VecDeque<LinkEvent<P>>,
    /// Requests sent since the link was made (for the measurements of control traffic).
    pub requests_sent: u64,
    /// Connection attempts that failed since the link was last up.
    failed_attempts: u32,
    /// Our secret from the tracker's Register reply, shown in every request.
    secret: Option<Secret>,
}

impl<P> TrackerLink<P> {
    /// A link to the tracker at `addr` that will use `token` in the caller's poll; it
    /// connects at the first [`handle_timeout`](Self::handle_timeout).
    pub fn new(addr: SocketAddr, token: Token, now: Instant) -> Self {
        Self::with_trackers(vec![addr], token, now)
    }

    /// A link to one of several trackers sharing a registry (see the tracker's
    /// `--registry`): it connects to the first, and when the connection is lost or cannot be
    /// made, moves to the next at once; it backs off only after every one failed in turn.
    /// The member keeps its identity across them (it shows its secret when it registers
    /// again). `addrs` must not be empty.
    pub fn with_trackers(addrs: Vec<SocketAddr>, token: Token, now: Instant) -> Self {
        assert!(!addrs.is_empty(), "a tracker link needs a tracker");
        Self {
            addrs,
            current: 0,
            token,
            conn: None,
            pending: VecDeque::new(),
            retry_at: Some(now),
            backoff: FIRST_BACKOFF,
            events: VecDeque::new(),
            requests_sent: 0,
            failed_attempts: 0,
            secret: None,
        }
    }

    /// The address of the tracker in use (or being tried).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[self.current]
    }

    /// Every tracker this link may use.
    pub fn trackers(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Keeps the secret the tracker gave us at Register (see [`proto::Secret`]): every later
    /// request shows it, a Register again included (only the member itself may register
    /// its name again while it is alive). `None` after the tracker forgot us.
    pub fn set_secret(&mut self, secret: Option<Secret>) {
        self.secret = secret;
    }

    /// The secret every request shows, for requests sent another way (UDP heartbeats).
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// Connection attempts that failed since the link was last up (0 while it is up, or
    /// before the first attempt).
    pub fn failed_attempts(&self) -> u32 {
        self.failed_attempts
    }

    /// Whether the connection is established.
    pub fn is_up(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.connected)
    }

    /// Sends `request`; its reply comes back as [`LinkEvent::Reply`] with `purpose`. When
    /// there is no connection the request is refused at once, handing `purpose` back.
    pub fn request(&mut self, request: Request, purpose: P) -> Result<(), P> {
        self.request_showing(request, None, purpose)
    }

    /// As [`request`](Self::request), showing `seal`, the proof that we hold a sealed
    /// group's key (see [`Envelope::seal`]).
    pub fn request_showing(
        &mut self,
        request: Request,
        seal: Option<Secret>,
        purpose: P,
    ) -> Result<(), P> {
        let envelope = Envelope {
            request,
            proto: Some(PROTOCOL_VERSION),
            secret: self.secret.clone(),
            seal,
        };
        self.send(&envelope, purpose)
    }

    /// Sends a request its caller wrapped itself (a member core's, which shows its own
    /// secret); otherwise as [`request`](Self::request).
    pub fn send(&mut self, envelope: &Envelope, purpose: P) -> Result<(), P> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(purpose);
        };
        envelope.encode_into(&mut conn.out);
        self.pending.push_back(purpose);
        self.requests_sent += 1;
        if conn.connected {
            let result = flush(conn);
            if let Err(e) = result {
                self.fail(e.to_string());
            }
        }
        Ok(())
    }

    /// The socket is ready (its token came up in the poll).
    pub fn handle_ready(&mut self, now: Instant) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail_at(now, e.to_string()),
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    self.failed_attempts = 0;
                    self.backoff = FIRST_BACKOFF;
                    self.events.push_back(LinkEvent::Connected);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail_at(now, e.to_string()),
            }
        }
        let conn = self.conn.as_mut().expect("checked above");
        if let Err(e) = flush(conn) {
            return self.fail_at(now, e.to_string());
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return self.fail_at(now, "the tracker closed the connection".into()),
                Ok(n) => conn.framer.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail_at(now, e.to_string()),
            }
        }
        loop {
            let reply = match conn.framer.next_frame() {
                Ok(Some(frame)) => Reply::decode(frame),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match reply {
                Ok(reply) => match self.pending.pop_front() {
                    Some(purpose) => self.events.push_back(LinkEvent::Reply(purpose, reply)),
                    None => log::debug!("an unrequested reply from the tracker: {reply:?}"),
                },
                Err(e) => return self.fail_at(now, format!("unreadable reply: {e}")),
            }
        }
    }

    /// Connects (again) when it is time to.
    pub fn handle_timeout(&mut self, registry: &Registry, now: Instant) {
        if self.conn.is_some() || self.retry_at.is_none_or(|at| at > now) {
            return;
        }
        self.retry_at = None;
        match TcpStream::connect(self.addr()) {
            Ok(mut stream) => {
                if let Err(e) = registry.register(
                    &mut stream,
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    return self.fail_at(now, e.to_string());
                }
                let _ = stream.set_nodelay(true);
                self.conn = Some(Connection {
                    stream,
                    connected: false,
                    out: Vec::new(),
                    framer: JsonFramer::new(proto::MAX_REQUEST_LEN * 16),
                });
            }
            Err(e) => self.fail_at(now, e.to_string()),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LinkEvent<P>> {
        self.events.pop_front()
    }

    fn fail(&mut self, reason: String) {
        self.fail_at(Instant::now(), reason)
    }

    fn fail_at(&mut self, now: Instant, reason: String) {
        let was_up = self.conn.take().is_some_and(|c| c.connected);
        let tracker = self.addr();
        for purpose in self.pending.drain(..) {
            self.events.push_back(LinkEvent::Lost(purpose));
        }
        if was_up {
            self.events
                .push_back(LinkEvent::Disconnected { tracker, reason });
        } else {
            self.failed_attempts = self.failed_attempts.saturating_add(1);
            log::debug!("cannot reach the tracker at {}: {reason}", self.addr());
        }
        if self.addrs.len() > 1 {
            // Another tracker shares the registry: try it at once, unless every one has
            // just failed in turn.
            self.current = (self.current + 1) % self.addrs.len();
            let round_failed = !was_up && self.failed_attempts as usize % self.addrs.len() == 0;
            if !round_failed {
                log::info!("moving to the tracker at {}", self.addr());
                self.retry_at = Some(now);
                return;
            }
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

fn flush(conn: &mut Connection) -> io::Result<()> {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.out.drain(..written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    /// Polls until the link has an event or `patience` runs out.
    fn next_event(
        link: &mut TrackerLink<u8>,
        poll: &mut Poll,
        patience: Duration,
    ) -> Option<LinkEvent<u8>> {
        let deadline = Instant::now() + patience;
        let mut events = Events::with_capacity(8);
        while Instant::now() < deadline {
            let now = Instant::now();
            link.handle_timeout(poll.registry(), now);
            if let Some(e) = link.poll_event() {
                return Some(e);
            }
            poll.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            if !events.is_empty() {
                link.handle_ready(Instant::now());
            }
            if let Some(e) = link.poll_event() {
                return Some(e);
            }
        }
        None
    }

    /// A free port with nothing listening: connecting there is refused.
    fn dead_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_link_to_several_trackers_moves_to_the_next_at_once_when_one_is_gone() {
        let mut poll = Poll::new().unwrap();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = dead_addr();
        let started = Instant::now();
        let mut link: TrackerLink<u8> =
            TrackerLink::with_trackers(vec![dead, live.local_addr().unwrap()], Token(0), started);
        assert_eq!(link.addr(), dead);
        let event = next_event(&mut link, &mut poll, Duration::from_secs(2));
        assert_eq!(event, Some(LinkEvent::Connected));
        assert_eq!(link.addr(), live.local_addr().unwrap());
        // Without waiting for the backoff (100 ms after a failure).
        assert!(started.elapsed() < FIRST_BACKOFF, "{:?}", started.elapsed());
        // The live one goes too: the link says which was lost, and moves on.
        let (conn, _) = live.accept().unwrap();
        drop(conn);
        drop(live);
        let event = next_event(&mut link, &mut poll, Duration::from_secs(2));
        assert!(
            matches!(&event, Some(LinkEvent::Disconnected { tracker, .. }) if *tracker != dead),
            "{event:?}"
        );
        assert_eq!(link.addr(), dead, "the next one, round the list");
    }

    #[test]
    fn a_link_to_one_tracker_backs_off_between_attempts() {
        let mut poll = Poll::new().unwrap();
        let dead = dead_addr();
        let now = Instant::now();
        let mut link: TrackerLink<u8> = TrackerLink::new(dead, Token(0), now);
        assert_eq!(
            next_event(&mut link, &mut poll, Duration::from_millis(300)),
            None
        );
        // 100 ms, then 200 ms apart: three attempts at most in 300 ms (at once, there
        // would be hundreds).
        let attempts = link.failed_attempts();
        assert!((1..=3).contains(&attempts), "{attempts} attempts");
        assert_eq!(link.addr(), dead);
    }
}
