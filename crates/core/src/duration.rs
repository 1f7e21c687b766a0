//! Go-style durations (`10s`, `1m30s`, `500ms`), the format Kubernetes users already write.
//!
//! Ours rather than `kube_core::Duration`: that one computes in `f64` and multiplies with
//! `Duration::mul_f64`, which panics on overflow (`"99999999999999999999h".parse()` does), while
//! these strings come from users' objects and flags; ours is integer nanoseconds, checked.

use std::time::Duration;

/// The longest duration accepted, in nanoseconds (about 317 years).
const MAX_NANOS: u128 = 10_000_000_000 * 1_000_000_000;

/// Parses a Go `time.ParseDuration` string, in integer nanoseconds (no float rounding): `1.1s`
/// is exactly 1,100 ms. Negative durations are rejected; fraction digits finer than a
/// nanosecond are dropped, as Go does.
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let out_of_range = || "duration out of range".to_string();
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("missing unit (one of ns, us, ms, s, m, h)".into()),
            other => return Err(format!("unknown unit {other:?} (one of ns, us, ms, s, m, h)")),
        };
        rest = &rest[unit_len..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("bad number {number:?}"));
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| out_of_range())? };
        let mut part = 0; // the fraction, below one `unit`
        let mut scale = unit;
        for digit in fraction.bytes() {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        total = whole
            .checked_mul(unit)
            .and_then(|n| n.checked_add(part))
            .and_then(|n| n.checked_add(total))
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(out_of_range)?;
    }
    u64::try_from(total).map(Duration::from_nanos).map_err(|_| out_of_range())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("10").is_err());
        assert!(parse("ten seconds").is_err());
        assert!(parse("-1s").is_err());
        assert!(parse("").is_err());
        assert!(parse("5d").is_err());
        assert_eq!(parse("1.1s"), Ok(Duration::from_millis(1100)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("2h45m30.5s"), Ok(Duration::from_millis((2 * 3600 + 45 * 60) * 1000 + 30_500)));
        assert_eq!(parse("1.0000000009s"), Ok(Duration::from_nanos(1_000_000_000)));
        assert_eq!(parse("1\u{b5}s"), Ok(Duration::from_micros(1)));
        assert!(parse(".s").is_err());
        assert!(parse("1..5s").is_err());
        assert!(parse("1.5.5s").is_err());
        assert!(parse("99999999999999999999999999999999999999999h").is_err());
        assert!(parse("10000000001s").is_err());
    }
}
