//! Durations as operators write them on the command line: `90m`, `36h`, `30d`, `1y`.
//!
//! A year is 365 days: these durations bound certificate and bundle lifetimes, where a
//! calendar-exact year would only make the output harder to predict.

use std::fmt;
use std::str::FromStr;

/// A non-negative duration parsed from `<number><unit>` with unit `s`, `m`, `h`, `d`, `w` or `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    seconds: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: write a number followed by s, m, h, d, w or y, e.g. 90m, 36h, 30d, 1y")]
pub struct ParseDurationError {
    input: String,
}

impl Duration {
    pub const fn from_secs(seconds: u64) -> Self {
        Duration { seconds }
    }
    pub const fn from_days(days: u64) -> Self {
        Duration { seconds: days * 86_400 }
    }
    pub fn as_secs(self) -> u64 {
        self.seconds
    }
    pub fn to_time(self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.seconds).unwrap_or(i64::MAX))
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError { input: s.to_string() };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => 365 * 86_400,
            _ => return Err(err()),
        };
        n.checked_mul(mult).map(Duration::from_secs).ok_or_else(err)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        for (unit, len) in [("y", 365 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s != 0 && s % len == 0 {
                return write!(f, "{}{unit}", s / len);
            }
        }
        write!(f, "{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_units() {
        assert_eq!("90m".parse::<Duration>().unwrap().as_secs(), 5_400);
        assert_eq!("36h".parse::<Duration>().unwrap().as_secs(), 129_600);
        assert_eq!("30d".parse::<Duration>().unwrap().as_secs(), 2_592_000);
        assert_eq!("1y".parse::<Duration>().unwrap().as_secs(), 31_536_000);
        assert_eq!("7d".parse::<Duration>().unwrap().to_string(), "7d");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "d", "10", "-1d", "1.5d", "3x", "99999999999999999999y"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} accepted");
        }
    }
}
