//! The interactive peer's console: where the lines a person types come from (in order,
//! whatever their bytes) and where the lines for them go, with everything that came from the
//! network made harmless for a terminal.

use std::borrow::Cow;
use std::io::{self, BufRead, Write};
use std::sync::mpsc::Sender;

use crate::ChannelEvent;

/// One item of the user's input, in the order typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line, without its line ending.
    Line(String),
    /// A line whose bytes were not all UTF-8: the invalid ones are replaced with U+FFFD.
    Mangled(String),
    /// End of input (Ctrl-D, the end of a pipe): quit once what came before is applied.
    End,
    /// Ctrl-C at the line editor: quit now.
    Interrupt,
}

/// Where the lines for the user go.
pub trait Screen: Send {
    /// Shows one line (its network-borne parts already made [`visible`]).
    fn line(&mut self, text: &str) -> io::Result<()>;
    /// The prompt from now on (it names the group written to); `idle` says that every line
    /// typed so far has been applied, so a line editor may show it again.
    fn prompt(&mut self, prompt: &str, idle: bool);
}

/// One line per line and no prompt: for a pipe or a file, where a prompt is noise.
pub struct PlainScreen<W: Write>(pub W);

impl<W: Write + Send> Screen for PlainScreen<W> {
    fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.0, "{text}")?;
        self.0.flush()
    }

    fn prompt(&mut self, _prompt: &str, _idle: bool) {}
}

/// Reads `input` line by line on a helper thread (reading blocks; the peer must not), handing
/// each line to `to`, up to and with [`Input::End`]. Bytes that are not UTF-8 are replaced,
/// never fatal: the line arrives as [`Input::Mangled`].
pub fn read_lines<T: From<Input> + Send + 'static>(
    input: impl BufRead + Send + 'static,
    to: Sender<T>,
) {
    std::thread::spawn(move || {
        let mut input = input;
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            let item = match input.read_until(b'\n', &mut bytes) {
                Ok(0) | Err(_) => Input::End,
                Ok(_) => {
                    let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    match String::from_utf8_lossy(line) {
                        Cow::Borrowed(text) => Input::Line(text.to_owned()),
                        Cow::Owned(text) => Input::Mangled(text),
                    }
                }
            };
            let end = item == Input::End;
            if to.send(item.into()).is_err() || end {
                return;
            }
        }
    });
}

/// The line that tells a person about a membership or ordering event, if it is one (its
/// names came from the network: show it [`visible`]).
pub fn describe(event: &ChannelEvent) -> Option<String> {
    Some(match event {
        ChannelEvent::MemberJoined { group, member } => format!("* {member} joined {group}"),
        ChannelEvent::MemberLeft { group, member } => format!("* {member} left {group}"),
        ChannelEvent::MemberEvicted { group, member } => {
            format!("* {member} was evicted from {group} (it stopped answering)")
        }
        ChannelEvent::SequencerLost { group, reason } => format!(
            "* total order unavailable in {group}: lost the sequencer ({reason}); \
             messages wait, nothing is delivered out of order"
        ),
        ChannelEvent::SequencerBack { group, new: true } => {
            format!("* total order in {group} resumes with a new sequencer")
        }
        ChannelEvent::SequencerBack { group, new: false } => {
            format!("* total order in {group} resumes (the sequencer answers again)")
        }
        ChannelEvent::WeWereEvicted { group } => format!(
            "* the tracker had evicted us from {group} (our heartbeats did not reach it in \
             time); registering again and greeting the group afresh"
        ),
        _ => return None,
    })
}

/// `text` as it may be shown on a terminal: control characters (which could move the
/// cursor, rewrite a line with `\r`, change the window title or the colours) become visible
/// escapes such as `\r`, `\x1b` or `\u{9b}`, as do the characters that reorder text
/// (bidirectional overrides). Nothing is copied when there is nothing to change.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_and_the_rest_is_untouched() {
        assert!(matches!(visible("hello, κόσμε"), Cow::Borrowed(_)));
        assert_eq!(
            visible("\x1b]0;pwned title\x07"),
            "\\x1b]0;pwned title\\x07"
        );
        assert_eq!(
            visible("x\rin books yann says:: hi"),
            "x\\rin books yann says:: hi"
        );
        assert_eq!(visible("a\nb\tc\u{9b}31m"), "a\\nb\\tc\\u{9b}31m");
        assert_eq!(visible("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(visible("\x7f"), "\\x7f");
    }

    #[test]
    fn lines_are_read_in_order_and_bad_bytes_are_replaced_not_fatal() {
        let input: &'static [u8] = b"one\r\ntw\xffo\nthree";
        let (tx, rx) = std::sync::mpsc::channel::<Input>();
        read_lines(input, tx);
        let got: Vec<Input> = rx.iter().collect();
        assert_eq!(
            got,
            [
                Input::Line("one".into()),
                Input::Mangled("tw\u{fffd}o".into()),
                Input::Line("three".into()),
                Input::End
            ]
        );
    }
}
