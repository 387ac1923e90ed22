//! The time strings of the lab's Python programs: `str(datetime.now())`, naive local time
//! (the machine's time zone, not UTC) with microseconds, and no fraction at all when the
//! microseconds are zero (`2022-04-22 15:35:31.280574`, `2022-04-22 15:35:31`).

use chrono::{DateTime, NaiveDateTime};

use crate::time::Nanos;

/// A time string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a time string of the form 2022-04-22 15:35:31.280574: {0:?}")]
pub struct BadTime(pub String);

/// Formats `t` as Python's `str(datetime.now())` would on a machine `utc_offset_s` seconds
/// ahead of UTC.
pub fn format(t: Nanos, utc_offset_s: i32) -> String {
    let local = t.plus(i64::from(utc_offset_s) * 1_000_000_000);
    let secs = local.0.div_euclid(1_000_000_000);
    let micros = (local.0.rem_euclid(1_000_000_000) / 1000) as u32;
    let Some(dt) = DateTime::from_timestamp(secs, micros * 1000) else {
        return "invalid time".into();
    };
    let naive = dt.naive_utc();
    if micros == 0 {
        naive.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        naive.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

/// Reads such a string (with or without fraction, surrounding white space allowed) from a
/// machine `utc_offset_s` seconds ahead of UTC.
pub fn parse(s: &str, utc_offset_s: i32) -> Result<Nanos, BadTime> {
    let text = s.trim();
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S"))
        .map_err(|_| BadTime(text.chars().take(64).collect()))?;
    let utc = naive.and_utc();
    let ns = utc
        .timestamp_nanos_opt()
        .ok_or_else(|| BadTime(text.to_owned()))?;
    Ok(Nanos(ns).plus(-i64::from(utc_offset_s) * 1_000_000_000))
}

/// Splits a byte stream of back-to-back time strings (the seed sends them with no
/// delimiter, and two may arrive in one read) into the strings: each is exactly 19 or 26
/// characters long and starts with a four-digit year.
pub fn split(buffer: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let trimmed = buffer.trim_start().len();
        let skip = buffer.len() - trimmed;
        buffer.drain(..skip);
        if buffer.len() < 19 {
            return out;
        }
        // With a fraction: 26 characters; we wait for them unless what follows the 19th
        // character is clearly the start of the next string (or nothing more will come).
        let with_fraction = buffer.as_bytes().get(19) == Some(&b'.');
        let len = if with_fraction { 26 } else { 19 };
        if buffer.len() < len {
            return out;
        }
        out.push(buffer[..len].to_owned());
        buffer.drain(..len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        // 2022-04-22 15:35:31.280574 UTC
        let t = parse("2022-04-22 15:35:31.280574", 0).expect("valid");
        assert_eq!(format(t, 0), "2022-04-22 15:35:31.280574");
        let whole = parse("2022-04-22 15:35:31", 0).expect("valid");
        assert_eq!(format(whole, 0), "2022-04-22 15:35:31");
        assert_eq!(t.since(whole), 280_574_000);
        // The same instant on a machine at UTC+3 reads three hours later.
        assert_eq!(format(t, 3 * 3600), "2022-04-22 18:35:31.280574");
        assert_eq!(parse("2022-04-22 18:35:31.280574", 3 * 3600), Ok(t));
        assert!(parse("yesterday", 0).is_err());
    }

    #[test]
    fn splits_strings_that_arrive_together() {
        let mut buf = String::from("2022-04-22 15:35:31.2805742022-04-22 15:35:36");
        assert_eq!(
            split(&mut buf),
            ["2022-04-22 15:35:31.280574", "2022-04-22 15:35:36"]
        );
        assert!(buf.is_empty());
        buf.push_str("2022-04-22 15:3");
        assert!(split(&mut buf).is_empty(), "waits for the rest");
    }
}
