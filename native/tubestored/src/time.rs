//! Wall-clock times as the log and the history print and read them: UTC,
//! `YYYY-MM-DDTHH:MM:SS.mmmZ`, or seconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ns` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let ms = (ns / 1_000_000) % 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, (s / 60) % 60, s % 60)
}

/// Parses a time given on the command line: seconds since the epoch (`1700000000`, fractions
/// allowed) or UTC `YYYY-MM-DDTHH:MM:SS[.fff][Z]` (also with a space for the `T`, and a bare
/// date meaning its midnight). Returns nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let secs: u64 = whole.parse().ok()?;
        return secs.checked_mul(1_000_000_000)?.checked_add(frac_ns(frac)?);
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, clock) = match s.split_once(['T', ' ']) {
        Some((d, c)) => (d, c),
        None => (s, "00:00:00"),
    };
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let mo: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (hms, frac) = match clock.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (clock, None),
    };
    let mut cp = hms.split(':');
    let h: u64 = cp.next()?.parse().ok()?;
    let mi: u64 = cp.next()?.parse().ok()?;
    let se: u64 = cp.next().map_or(Some(0), |x| x.parse().ok())?;
    if cp.next().is_some() || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let ns = match frac {
        Some("") => return None,
        Some(f) => frac_ns(f)?,
        None => 0,
    };
    let days = days_from_civil(y, mo, d);
    if days < 0 {
        return None;
    }
    Some((days as u64 * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000_000 + ns)
}

/// Decimal fraction digits of a second as nanoseconds ("" is 0).
fn frac_ns(f: &str) -> Option<u64> {
    if f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if f.is_empty() {
        return Some(0);
    }
    Some(f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let t = 1_764_456_642_123_000_000; // 2025-11-29T22:50:42.123Z
        assert_eq!(format_utc(t), "2025-11-29T22:50:42.123Z");
        assert_eq!(parse_time("2025-11-29T22:50:42.123Z"), Some(t));
        assert_eq!(parse_time("2025-11-29 22:50:42.123"), Some(t));
        assert_eq!(parse_time("1764456642.123"), Some(t));
        assert_eq!(parse_time("1764456642"), Some(t - 123_000_000));
        assert_eq!(parse_time("2025-11-29"), Some(1_764_374_400_000_000_000));
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_time("2024-02-29T00:00:00Z").map(format_utc).as_deref(), Some("2024-02-29T00:00:00.000Z"));
        for bad in ["", "yesterday", "2025-13-01", "2025-11-29T25:00", "2025-11-29T10:00:00.", "-5"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
