//! Splitting a TCP byte stream into consecutive JSON values.
//!
//! The report's client sends one (possibly pretty-printed) JSON value per connection with no
//! delimiter; newer clients send many on one connection, with any white space between them;
//! and TCP may cut any of them anywhere. [`JsonFramer`] finds the end of each value by
//! tracking brackets and strings, incrementally, so every byte is scanned once.

use crate::error::Error;

/// Incremental splitter of a byte stream into top-level JSON objects (or arrays).
///
/// Feed it bytes with [`push`](Self::push) as they arrive, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. A frame is handed out as a
/// slice; decode it (for example with [`Request::decode`](crate::Request::decode)) before the
/// next call. After an error the stream cannot be resynchronised reliably: the framer drops
/// what it holds, and the caller should answer and close the connection.
#[derive(Debug)]
pub struct JsonFramer {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out or skipped; dropped lazily.
    consumed: usize,
    /// Next byte of `buf` to scan.
    scan: usize,
    /// Where the value being scanned began, once its first byte is seen.
    start: Option<usize>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    max_frame: usize,
}

impl JsonFramer {
    /// A framer that rejects any single value longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            consumed: 0,
            scan: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            max_frame,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole value.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// True when a value has begun but not ended (the peer stopped mid-request).
    pub fn is_mid_value(&self) -> bool {
        self.start.is_some()
    }

    /// The next complete value, `Ok(None)` if more bytes are needed, or an error if the
    /// stream holds something that is not a JSON object or array, or a value over the limit.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, Error> {
        self.compact();
        while self.scan < self.buf.len() {
            let i = self.scan;
            let b = self.buf[i];
            self.scan += 1;
            let Some(start) = self.start else {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => self.consumed = self.scan,
                    b'{' | b'[' => {
                        self.start = Some(i);
                        self.depth = 1;
                    }
                    other => {
                        self.reset();
                        return Err(Error::Syntax {
                            detail: format!(
                                "expected a JSON object, found byte {:?}",
                                char::from(other)
                            ),
                        });
                    }
                }
                continue;
            };
            if self.scan - start > self.max_frame {
                let len = self.buf.len() - start;
                self.reset();
                return Err(Error::Oversized {
                    len,
                    max: self.max_frame,
                });
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.start = None;
                        self.consumed = self.scan;
                        return Ok(Some(&self.buf[start..self.scan]));
                    }
                }
                _ => {}
            }
        }
        if let Some(start) = self.start
            && self.buf.len() - start > self.max_frame
        {
            let len = self.buf.len() - start;
            self.reset();
            return Err(Error::Oversized {
                len,
                max: self.max_frame,
            });
        }
        Ok(None)
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.scan -= self.consumed;
            if let Some(start) = self.start.as_mut() {
                *start -= self.consumed;
            }
            self.consumed = 0;
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.consumed = 0;
        self.scan = 0;
        self.start = None;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;
    use proptest::prelude::*;

    fn frames(framer: &mut JsonFramer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame().expect("valid stream") {
            out.push(frame.to_vec());
        }
        out
    }

    #[test]
    fn splits_consecutive_values_with_any_white_space() {
        let mut f = JsonFramer::new(1024);
        f.push(b"{\"a\":1}{\"b\":[1,{\"c\":2}]}\n\n  {\"d\":\"}{\"}\t");
        assert_eq!(
            frames(&mut f),
            [
                b"{\"a\":1}".to_vec(),
                b"{\"b\":[1,{\"c\":2}]}".to_vec(),
                b"{\"d\":\"}{\"}".to_vec()
            ]
        );
        assert_eq!(f.pending(), 0);
        assert!(!f.is_mid_value());
    }

    #[test]
    fn handles_escaped_quotes_and_backslashes_inside_strings() {
        let mut f = JsonFramer::new(1024);
        f.push(br#"{"a":"x\"}\\"}{"b":"\\\""}"#);
        assert_eq!(
            frames(&mut f),
            [br#"{"a":"x\"}\\"}"#.to_vec(), br#"{"b":"\\\""}"#.to_vec()]
        );
    }

    #[test]
    fn rejects_a_stream_that_is_not_objects() {
        let mut f = JsonFramer::new(1024);
        f.push(b"  hello");
        assert!(matches!(f.next_frame(), Err(Error::Syntax { .. })));
        // The framer starts afresh after the error.
        f.push(b"{}");
        assert_eq!(f.next_frame(), Ok(Some(&b"{}"[..])));
    }

    #[test]
    fn rejects_an_endless_value_once_it_passes_the_limit() {
        let mut f = JsonFramer::new(64);
        f.push(b"{\"Type\": 1, \"Content\": \"");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(&[b'x'; 100]);
        assert!(matches!(
            f.next_frame(),
            Err(Error::Oversized { max: 64, .. })
        ));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_value_of_exactly_the_limit_passes() {
        let value = b"{\"k\":\"0123456789\"}";
        let mut f = JsonFramer::new(value.len());
        f.push(value);
        assert_eq!(f.next_frame(), Ok(Some(&value[..])));
    }

    proptest! {
        /// However TCP cuts the stream, the same requests come out in the same order.
        #[test]
        fn frames_survive_any_segmentation(cuts in proptest::collection::vec(0usize..400, 0..20)) {
            let requests = [
                Request::ListGroups,
                Request::JoinGroup { username: "a\"}".into(), group: "g{".into(), order: None },
                Request::Heartbeat { username: "\\".into() },
            ];
            let mut stream = Vec::new();
            for (i, r) in requests.iter().enumerate() {
                if i == 1 {
                    // Pretty-printed, as the report's client sends it.
                    let value: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
                    stream.extend(serde_json::to_vec_pretty(&value).unwrap());
                    stream.extend(b"\n ");
                } else {
                    stream.extend(r.encode());
                }
            }
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort();
            let mut f = JsonFramer::new(4096);
            let mut decoded = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([stream.len()]) {
                f.push(&stream[last..p]);
                last = p;
                while let Some(frame) = f.next_frame().unwrap() {
                    decoded.push(Request::decode(frame).unwrap());
                }
            }
            prop_assert_eq!(decoded, requests.to_vec());
        }
    }
}
