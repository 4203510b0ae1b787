//! Value types for config fields that users write as text: sizes (`"1MiB"` or bytes)
//! and durations (`"30s"`, humantime).

use serde::{Deserialize, Deserializer};

/// Deserializes a size written as an integer of bytes or a string such as `"1MiB"`.
///
/// # Errors
/// Negative numbers and strings `bytesize` cannot parse.
pub fn size<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(de)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

/// Parses `"1MiB"`, `"512 KiB"`, `"1000"`.
///
/// # Errors
/// A reason naming the text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    if let Ok(n) = text.trim().parse::<u64>() {
        return Ok(n);
    }
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("invalid size {text:?}; write bytes or a unit such as \"1MiB\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_units_and_bytes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1024 * 1024);
        assert_eq!(parse_size("64 KiB").unwrap(), 64 * 1024);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
    }
}
