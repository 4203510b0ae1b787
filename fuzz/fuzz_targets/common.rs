//! Shared by the signature fuzz targets: splits the input into header values and a body.

use http::{HeaderMap, HeaderName, HeaderValue};

/// First line(s) become the values of `names`, in order; the rest is the body.
pub fn split<'a>(data: &'a [u8], names: &[&'static str]) -> (HeaderMap, &'a [u8]) {
    let mut headers = HeaderMap::new();
    let mut rest = data;
    for name in names {
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        if let Ok(value) = HeaderValue::from_bytes(&rest[..end]) {
            headers.insert(HeaderName::from_static(name), value);
        }
        rest = rest.get(end + 1..).unwrap_or(&[]);
    }
    (headers, rest)
}
