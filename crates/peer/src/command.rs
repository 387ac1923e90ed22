//! The interactive peer's command line: `!` commands and messages.

/// One line typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `!lg`: list the groups.
    ListGroups,
    /// `!lm GROUP`: list the members of a group.
    ListMembers(String),
    /// `!j GROUP`: join a group (created if needed).
    Join(String),
    /// `!w GROUP`: write to this group from now on.
    Write(String),
    /// `!e GROUP`: leave a group.
    Exit(String),
    /// `!q`: quit.
    Quit,
    /// `!h`: the commands.
    Help,
    /// Anything else: a message to the selected group.
    Say(String),
    /// An empty line: nothing.
    Nothing,
}

impl Command {
    /// Whether applying it asks the tracker (it then waits for a connection to it).
    pub fn needs_tracker(&self) -> bool {
        matches!(
            self,
            Self::ListGroups | Self::ListMembers(_) | Self::Join(_) | Self::Exit(_)
        )
    }
}

/// The help text of `!h` (and the end of `peer --help`).
pub const HELP: &str = "\
commands of the interactive peer:
  !lg          list the groups
  !lm GROUP    list the members of GROUP
  !j GROUP     join GROUP (it is created if it does not exist)
  !w GROUP     write to GROUP from now on
  !e GROUP     leave GROUP
  !q           quit (also end of input or Ctrl-C)
  !h           this help
anything else is a message to the group you write to";

/// Parses one line; a malformed command gets its usage line as the error.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Command::Nothing);
    }
    let Some(rest) = line.trim_start().strip_prefix('!') else {
        return Ok(Command::Say(line.to_owned()));
    };
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default();
    let arg = words.next();
    let extra = words.next().is_some();
    let group = |usage: &str, make: fn(String) -> Command| match (arg, extra) {
        (Some(g), false) => Ok(make(g.to_owned())),
        _ => Err(format!("usage: {usage}")),
    };
    let bare = |usage: &str, command: Command| match arg {
        None => Ok(command),
        Some(_) => Err(format!("usage: {usage}")),
    };
    match name {
        "lg" => bare("!lg  (list the groups)", Command::ListGroups),
        "lm" => group(
            "!lm GROUP  (list the members of GROUP)",
            Command::ListMembers,
        ),
        "j" => group("!j GROUP  (join GROUP)", Command::Join),
        "w" => group("!w GROUP  (write to GROUP)", Command::Write),
        "e" => group("!e GROUP  (leave GROUP)", Command::Exit),
        "q" => bare("!q  (quit)", Command::Quit),
        "h" => bare("!h  (help)", Command::Help),
        other => Err(format!("unknown command !{other}; !h lists the commands")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_messages() {
        assert_eq!(parse("!lg"), Ok(Command::ListGroups));
        assert_eq!(parse("!lm books"), Ok(Command::ListMembers("books".into())));
        assert_eq!(parse("!j books\n"), Ok(Command::Join("books".into())));
        assert_eq!(parse("!w books"), Ok(Command::Write("books".into())));
        assert_eq!(parse("!e books"), Ok(Command::Exit("books".into())));
        assert_eq!(parse("!q"), Ok(Command::Quit));
        assert_eq!(parse("!h"), Ok(Command::Help));
        assert_eq!(parse("hello there"), Ok(Command::Say("hello there".into())));
        assert_eq!(parse("   "), Ok(Command::Nothing));
    }

    #[test]
    fn wrong_commands_get_their_usage_line() {
        assert_eq!(
            parse("!lm"),
            Err("usage: !lm GROUP  (list the members of GROUP)".into())
        );
        assert_eq!(parse("!j a b"), Err("usage: !j GROUP  (join GROUP)".into()));
        assert_eq!(parse("!q now"), Err("usage: !q  (quit)".into()));
        assert!(parse("!xyz").unwrap_err().contains("unknown command !xyz"));
    }
}
