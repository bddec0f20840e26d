//! Durations as Istio's YAML writes them: `"5s"`, `"100ms"`, `"1.5s"`, `"1h30m"`.
//!
//! Istio's CRDs accept Go duration syntax (protobuf JSON's `"1.5s"` is a subset of it), so that
//! is what is read. Negative durations are refused: no field of the mesh has a use for one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be a valid duration greater than or equal to 0s, such as \"1s\", \"100ms\" or \"1h30m\"; found {0:?}"
)]
pub struct DurationError(pub String);

impl Duration {
    pub const fn from_std(d: std::time::Duration) -> Self {
        Self(d)
    }

    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }

    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(text.to_owned());
        let s = text.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        if s == "0" {
            return Ok(Self::default());
        }
        if s.is_empty() || s.starts_with('-') {
            return Err(err());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            let (number, tail) = rest.split_at(num_len);
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(err());
            }
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                _ => return Err(err()),
            };
            let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| err())?
            };
            let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(err)?;
            let mut scale = unit_nanos;
            for digit in frac.chars() {
                scale /= 10;
                let d = u128::from(digit.to_digit(10).ok_or_else(err)?);
                nanos = nanos.checked_add(d * scale).ok_or_else(err)?;
            }
            total = total.checked_add(nanos).ok_or_else(err)?;
            rest = tail;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err())?;
        let sub = u32::try_from(total % 1_000_000_000).map_err(|_| err())?;
        Ok(Self(std::time::Duration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    /// Written the way protobuf JSON writes durations, which every Istio reader accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        s.parse::<Duration>().unwrap().as_std().as_millis()
    }

    #[test]
    fn reads_istio_and_go_forms() {
        assert_eq!(ms("1s"), 1000);
        assert_eq!(ms("100ms"), 100);
        assert_eq!(ms("1.5s"), 1500);
        assert_eq!(ms("1h30m"), 90 * 60 * 1000);
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms(".5s"), 500);
        assert_eq!("1us".parse::<Duration>().unwrap().as_std().as_nanos(), 1000);
    }

    #[test]
    fn refuses_nonsense_without_panicking() {
        for bad in [
            "",
            "apple",
            "1",
            "s",
            "-1s",
            "1.2.3s",
            "1sm",
            "99999999999999999999999h",
            "1 s",
            ".s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn writes_protobuf_json_form() {
        assert_eq!("1.5s".parse::<Duration>().unwrap().to_string(), "1.5s");
        assert_eq!("2m".parse::<Duration>().unwrap().to_string(), "120s");
        assert_eq!("100ms".parse::<Duration>().unwrap().to_string(), "0.1s");
    }
}
