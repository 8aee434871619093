//! Durations as Sluice's API writes them: whole seconds, or units such as `30s`, `5m`, `1h30m`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// `at` plus `by`, or the end of time if that is past it: a long wait is never cut short.
pub fn after(at: Timestamp, by: Duration) -> Timestamp {
    SignedDuration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Parses `30s`, `5m`, `1h30m`, `250ms`. The CRD's rules already refuse anything else.
pub fn parse(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// A pause duration: an integer number of seconds or a duration string.
pub fn from_int_or_string(value: &IntOrString) -> Option<Duration> {
    match value {
        IntOrString::Int(seconds) => u64::try_from(*seconds).ok().map(Duration::from_secs),
        IntOrString::String(text) => parse(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_api_accepts() {
        assert_eq!(parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse(""), None);
        assert_eq!(parse("5 minutes"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(
            from_int_or_string(&IntOrString::Int(45)),
            Some(Duration::from_secs(45))
        );
        assert_eq!(from_int_or_string(&IntOrString::Int(-1)), None);
    }

    #[test]
    fn a_wait_past_the_end_of_time_never_ends_early() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let forever = parse("999999999h").expect("within the API's bounds");
        assert_eq!(after(now, forever), Timestamp::MAX);
        assert_eq!(
            after(now, Duration::from_secs(60)),
            Timestamp::from_second(1_800_000_060).expect("time")
        );
    }
}
