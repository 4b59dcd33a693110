//! Value types and serde helpers every configuration section uses: durations (`"10s"`), sizes (`"64MiB"`), `fsync`.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// When a file floodgate writes is synced to disk (`fsync`): `"never"` (the kernel writes it
/// back in its own time; nothing is lost when floodgate restarts, only if the machine fails),
/// `"always"` (after every batch of writes), or a duration such as `"1s"` (at most that long
/// after a write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Never asked for.
    #[default]
    Never,
    /// After every batch of writes.
    Always,
    /// At most this long after a write.
    Interval(Duration),
}

impl Serialize for Fsync {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Fsync::Never => s.serialize_str("never"),
            Fsync::Always => s.serialize_str("always"),
            Fsync::Interval(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
        }
    }
}

impl<'de> Deserialize<'de> for Fsync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "never" => Ok(Fsync::Never),
            "always" => Ok(Fsync::Always),
            other => parse_duration(other).filter(|d| !d.is_zero()).map(Fsync::Interval).ok_or_else(|| {
                de::Error::custom(format!("`{other}` is not \"never\", \"always\" or a duration such as \"1s\""))
            }),
        }
    }
}

/// Parses `"200ms"`, `"10s"`, `"1.5s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// Parses `"64MiB"`, `"4KiB"`, `"1GiB"`, `"512B"`, `"10MB"` (decimal), or a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.replace('_', "").parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Serde for durations written as strings (`"10s"`).
/// `"10s"`-style durations for serde (`#[serde(with = "duration")]`).
pub mod duration {
    use super::*;

    /// Writes the value as text.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    /// Reads the value from text (or a number).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration string such as \"10s\" or \"200ms\""))?;
        parse_duration(&text)
            .ok_or_else(|| de::Error::custom(format!("`{text}` is not a duration such as \"10s\" or \"200ms\"")))
    }
}

/// Serde for byte sizes written as strings (`"64MiB"`) or integers.
/// Optional durations for serde.
pub mod opt_duration {
    use super::*;

    /// Writes the value as text.
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    /// Reads the value from text (or a number).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("`{text}` is not a duration such as \"500ms\" or \"2s\"")))
    }
}

/// `"64MiB"`-style sizes (or a byte count) for serde.
pub mod size {
    use super::*;

    /// Writes the value as text.
    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let text = match *v {
            v if v >= 1 << 30 && v % (1 << 30) == 0 => format!("{}GiB", v >> 30),
            v if v >= 1 << 20 && v % (1 << 20) == 0 => format!("{}MiB", v >> 20),
            v if v >= 1 << 10 && v % (1 << 10) == 0 => format!("{}KiB", v >> 10),
            v => format!("{v}B"),
        };
        s.serialize_str(&text)
    }

    /// Reads the value from text (or a number).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| de::Error::custom("expected a size such as \"64MiB\""))? {
            Raw::Int(v) => Ok(v),
            Raw::Text(t) => {
                parse_size(&t).ok_or_else(|| de::Error::custom(format!("`{t}` is not a size such as \"64MiB\"")))
            }
        }
    }
}

/// Where agents and aggregators keep state unless told: `floodgate-state` in the working
/// directory (the systemd unit sets its own).
pub fn default_state_dir() -> std::path::PathBuf {
    "floodgate-state".into()
}

/// `fsync = "never"`, left out when the configuration is written back.
pub fn is_never(f: &Fsync) -> bool {
    *f == Fsync::Never
}
