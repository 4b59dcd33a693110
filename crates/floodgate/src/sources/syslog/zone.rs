//! `[syslog] timezone`: the zone an RFC 3164 time without one is read in.

use jiff::tz::{Offset, TimeZone};

/// `"local"` (the host's zone, from `/etc/localtime` or `TZ`), `"UTC"`, a fixed offset
/// (`"+05:30"`, `"-03:00"`) or an IANA name (`"Europe/Paris"`).
pub fn parse(name: &str) -> Result<TimeZone, String> {
    match name {
        "local" => Ok(TimeZone::system()),
        "UTC" | "utc" | "Z" => Ok(TimeZone::UTC),
        fixed if fixed.starts_with(['+', '-']) => {
            let sign = if fixed.starts_with('-') { -1 } else { 1 };
            let (h, m) = fixed[1..].split_once(':').unwrap_or((&fixed[1..], "0"));
            let (h, m): (i32, i32) = match (h.parse(), m.parse()) {
                (Ok(h), Ok(m)) if h <= 23 && m <= 59 => (h, m),
                _ => return Err(format!("`{fixed}` is not an offset like \"+05:30\"")),
            };
            let offset = Offset::from_seconds(sign * (h * 3600 + m * 60)).map_err(|e| e.to_string())?;
            Ok(TimeZone::fixed(offset))
        }
        iana => TimeZone::get(iana).map_err(|e| format!("`{iana}` is not a known zone: {e}")),
    }
}

/// The zone's offset from UTC at `unix_ms`, in minutes.
pub fn offset_minutes(zone: &TimeZone, unix_ms: i64) -> i32 {
    match jiff::Timestamp::from_millisecond(unix_ms) {
        Ok(t) => zone.to_offset(t).seconds() / 60,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_offsets_and_iana_zones() {
        let jan = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let jul = 1_782_864_000_000; // 2026-07-01T00:00:00Z
        assert_eq!(offset_minutes(&parse("UTC").unwrap(), jan), 0);
        assert_eq!(offset_minutes(&parse("+05:30").unwrap(), jan), 330);
        assert_eq!(offset_minutes(&parse("-03:00").unwrap(), jan), -180);
        let paris = parse("Europe/Paris").unwrap();
        assert_eq!((offset_minutes(&paris, jan), offset_minutes(&paris, jul)), (60, 120));
        assert!(parse("Mars/Olympus").is_err());
        assert!(parse("+25:00").is_err());
        assert!(parse("local").is_ok());
    }
}
