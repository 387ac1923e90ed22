//! The replay window of one sender's sealer: which of the last [`SPAN`] numbers arrived.

use std::net::SocketAddr;

use crate::cipher::Cipher;

/// How many numbers below the highest one a window remembers.
pub(crate) const SPAN: u64 = 1024;

const WORDS: usize = (SPAN / 64) as usize;

/// Numbers seen: the highest, and a ring of bits for the [`SPAN`] below and including it
/// (bit `n % SPAN` for number `n`); and the sender's cipher, derived once.
pub(crate) struct Window {
    pub(crate) cipher: Cipher,
    highest: Option<u64>,
    bits: [u64; WORDS],
    /// When it was last used (the opener's count of opens).
    pub(crate) used: u64,
    /// The source address its datagrams came from.
    pub(crate) from: Option<SocketAddr>,
}

impl Window {
    /// A window where nothing arrived yet, of the sender sealing with `cipher`.
    pub(crate) fn new(cipher: Cipher) -> Self {
        Self {
            cipher,
            highest: None,
            bits: [0; WORDS],
            used: 0,
            from: None,
        }
    }

    /// Whether `n` has not arrived yet and is not too old to tell.
    pub(crate) fn is_new(&self, n: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if n > h => true,
            Some(h) if h - n >= SPAN => false,
            Some(_) => !self.bit(n),
        }
    }

    /// Notes that `n` arrived (it [`is_new`](Self::is_new)), at time `now`.
    pub(crate) fn mark(&mut self, n: u64, now: u64) {
        self.used = now;
        match self.highest {
            Some(h) if n <= h => {}
            Some(h) if n - h < SPAN => {
                for skipped in h + 1..n {
                    self.set(skipped, false);
                }
                self.highest = Some(n);
            }
            _ => {
                self.bits = [0; WORDS];
                self.highest = Some(n);
            }
        }
        self.set(n, true);
    }

    fn bit(&self, n: u64) -> bool {
        let i = n % SPAN;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, n: u64, on: bool) {
        let i = n % SPAN;
        let word = &mut self.bits[(i / 64) as usize];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model that remembers every number: a number is new exactly when it
        /// never arrived and lies within the span below the highest.
        #[test]
        fn a_window_admits_each_number_once_within_its_span(
            numbers in proptest::collection::vec(0u64..3000, 1..400)
        ) {
            let mut w = Window::new(Cipher::new(&[0u8; 32]));
            let mut seen = std::collections::BTreeSet::new();
            for (t, n) in numbers.into_iter().enumerate() {
                let highest = seen.iter().next_back().copied();
                let expected = !seen.contains(&n) && highest.is_none_or(|h| n > h || h - n < SPAN);
                prop_assert_eq!(w.is_new(n), expected, "number {}", n);
                if expected {
                    w.mark(n, t as u64);
                    seen.insert(n);
                }
            }
        }
    }
}
