//! A group chat in a few dozen lines, on [`peer::Channel`]: every line you type goes to the
//! group, every message of the group is printed.
//!
//! ```sh
//! cargo run --release -p tracker -- 127.0.0.1:5000          # terminal 1
//! cargo run --example chat -- ann 127.0.0.1:5000 books      # terminal 2
//! cargo run --example chat -- bob 127.0.0.1:5000 books      # terminal 3
//! ```

use std::io::BufRead;

use peer::{Channel, ChannelConfig, ChannelEvent};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, tracker, group] = args.as_slice() else {
        eprintln!("usage: chat NAME TRACKER_HOST:PORT GROUP");
        std::process::exit(2);
    };
    let tracker = match tracker.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chat: error: {tracker}: {e}");
            std::process::exit(2);
        }
    };
    let chan = match Channel::connect(ChannelConfig::new(name, tracker)) {
        Ok(chan) => chan,
        Err(e) => {
            eprintln!("chat: error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = chan.join(group) {
        eprintln!("chat: error: {e}");
        std::process::exit(1);
    }
    println!("{name} in {group}; type a line to send it, end of input to leave");
    std::thread::scope(|s| {
        s.spawn(|| {
            // Events until the channel closes.
            while let Ok(event) = chan.recv() {
                match event {
                    ChannelEvent::Message(m) => {
                        let text = String::from_utf8_lossy(&m.payload);
                        println!("{}: {}", m.author, text.escape_debug());
                    }
                    ChannelEvent::MemberJoined { member, .. } => println!("* {member} joined"),
                    ChannelEvent::MemberLeft { member, .. } => println!("* {member} left"),
                    other => println!("* {other:?}"),
                }
            }
        });
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if let Err(e) = chan.send(group, line.as_bytes()) {
                eprintln!("chat: {e}");
            }
        }
        // Leaving: a Bye to the group, Quit to the tracker; then the events end.
        chan.leave(group).ok();
        std::thread::sleep(std::time::Duration::from_millis(100));
        chan.stop();
    });
}
