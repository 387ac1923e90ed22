//! The peer at a terminal: a line editor (rustyline) with history and editing, lines from
//! the group printed above the line being typed without disturbing it, and a prompt that
//! names the group written to.

use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use peer::Shutdown;
use peer::console::{Input, Screen};
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};

/// How long the editor waits, after a command line (`!...`), for the peer to apply it
/// before it shows the prompt again (so that the prompt after `!j books` names books).
/// Typing goes on meanwhile: the terminal keeps the keys. After a message it does not wait:
/// the prompt stays as it was.
const APPLY_WAIT: Duration = Duration::from_millis(500);

/// The prompt as the peer last set it, and whether it has applied every line typed.
#[derive(Default)]
struct PromptState {
    text: String,
    /// Lines handed to the peer and not yet applied.
    unapplied: u64,
}

type SharedPrompt = Arc<(Mutex<PromptState>, Condvar)>;

/// What the peer prints goes through the editor's printer, above the line being typed.
struct EditorScreen<P: ExternalPrinter> {
    printer: P,
    prompt: SharedPrompt,
}

impl<P: ExternalPrinter + Send> Screen for EditorScreen<P> {
    fn line(&mut self, text: &str) -> io::Result<()> {
        // Outside the editor's raw mode the printer writes the text as it is: the line
        // ending is ours to add (inside it, the editor sees it and adds none).
        self.printer
            .print(format!("{text}\n"))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn prompt(&mut self, prompt: &str, idle: bool) {
        let (state, changed) = &*self.prompt;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.text = prompt.to_owned();
        if idle {
            state.unapplied = 0;
        }
        changed.notify_all();
    }
}

/// Starts the line editor on its own thread, handing what is typed to `to`; `prompt` is
/// shown until the peer sets another. Ctrl-C stops the peer at once through `stop` (it may be
/// waiting for the tracker or for a member). Fails when standard input is not a terminal the
/// editor can drive.
pub fn start<T: From<Input> + Send + 'static>(
    stop: Shutdown,
    prompt: String,
    to: Sender<T>,
) -> io::Result<Box<dyn Screen>> {
    let mut editor = DefaultEditor::new().map_err(|e| io::Error::other(e.to_string()))?;
    let printer = editor
        .create_external_printer()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let shared: SharedPrompt = Arc::new((
        Mutex::new(PromptState {
            text: prompt,
            unapplied: 0,
        }),
        Condvar::new(),
    ));
    let state = shared.clone();
    std::thread::spawn(move || {
        let mut after_command = false;
        loop {
            let prompt = {
                let (lock, changed) = &*state;
                let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                if after_command {
                    guard = changed
                        .wait_timeout_while(guard, APPLY_WAIT, |s| s.unapplied > 0)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                guard.text.clone()
            };
            let item = match editor.readline(&prompt) {
                Ok(text) => {
                    if !text.trim().is_empty() {
                        let _ = editor.add_history_entry(text.as_str());
                    }
                    // A paste of several lines arrives as one (the editor keeps it until
                    // Enter): each of its lines is applied in turn, as if typed.
                    let mut lines = pasted_lines(&text);
                    after_command = lines.iter().any(|l| l.trim_start().starts_with('!'));
                    let last = lines.pop().unwrap_or_default();
                    let (lock, _) = &*state;
                    lock.lock().unwrap_or_else(|p| p.into_inner()).unapplied +=
                        lines.len() as u64 + 1;
                    for line in lines {
                        if to.send(Input::Line(line).into()).is_err() {
                            return;
                        }
                    }
                    Input::Line(last)
                }
                Err(ReadlineError::Interrupted) => Input::Interrupt,
                Err(ReadlineError::Eof) => Input::End,
                Err(e) => {
                    log::warn!("the line editor failed: {e}");
                    Input::End
                }
            };
            if item == Input::Interrupt {
                stop.shutdown();
            }
            let last = matches!(item, Input::End | Input::Interrupt);
            if to.send(item.into()).is_err() || last {
                return;
            }
        }
    });
    Ok(Box::new(EditorScreen {
        printer,
        prompt: shared,
    }))
}

/// The lines of what the editor returned: one, or those of a paste (whatever its line
/// endings), without a last empty one.
fn pasted_lines(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if lines.len() > 1 && lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::pasted_lines;

    #[test]
    fn a_paste_of_several_lines_becomes_those_lines() {
        assert_eq!(pasted_lines("hello"), ["hello"]);
        assert_eq!(pasted_lines(""), [""]);
        assert_eq!(
            pasted_lines("!j books\r\nhi\rthere\n\nlast\n"),
            ["!j books", "hi", "there", "", "last"]
        );
    }
}
