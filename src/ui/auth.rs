//! The `[ui] token`: a request shows it as `Authorization: Bearer TOKEN` (scripts), or as the
//! session cookie the login form sets (browsers). The cookie holds a MAC of the token, not the
//! token, so a copied cookie is not the token; changing the token ends every session. It is
//! HttpOnly (no script reads it) and SameSite=Strict (no other site's page sends it).

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::secret::Secret;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "hookwarden_ui";

/// What the session cookie holds for `token`.
fn session(token: &Secret) -> String {
    // An HMAC key may be any length; new_from_slice cannot fail for HMAC.
    match Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()) {
        Ok(mut mac) => {
            mac.update(b"hookwarden web view session");
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

fn equal(a: &str, b: &str) -> bool {
    !b.is_empty() && a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `headers` carry `token` (as a bearer token) or its session cookie.
pub fn allowed(headers: &HeaderMap, token: &Secret) -> bool {
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|given| equal(given.trim(), token.expose()));
    if bearer {
        return true;
    }
    let expected = session(token);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE_NAME && equal(value, &expected))
}

/// Whether a login form's `token` field is the token.
pub fn accepts(given: &str, token: &Secret) -> bool {
    equal(given, token.expose())
}

/// The `Set-Cookie` value of a login: for this browser session (no expiry), the view's
/// paths only, `Secure` when the request came through an HTTPS proxy (over plain HTTP a
/// browser would drop a Secure cookie, and the login would not stick).
pub fn set_cookie(token: &Secret, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!(
        "{COOKIE_NAME}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        session(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_token_or_its_cookie_lets_a_request_in() {
        let token = Secret::new("0123456789abcdef-token");
        let cookie = set_cookie(&token, false);
        let pair = cookie.split(';').next().unwrap();
        assert!(allowed(
            &headers(AUTHORIZATION, "Bearer 0123456789abcdef-token"),
            &token
        ));
        assert!(allowed(
            &headers(COOKIE, &format!("other=1; {pair}")),
            &token
        ));
        assert!(
            !pair.contains("0123456789abcdef-token"),
            "the cookie is not the token"
        );
        for wrong in [
            "Bearer 0123456789abcdef-toke",
            "Basic 0123456789abcdef-token",
            "Bearer ",
        ] {
            assert!(!allowed(&headers(AUTHORIZATION, wrong), &token), "{wrong}");
        }
        assert!(!allowed(&headers(COOKIE, "hookwarden_ui=00"), &token));
        assert!(!allowed(&headers(COOKIE, "hookwarden_ui="), &token));
        let other = Secret::new("another-token-0123456789");
        assert!(
            !allowed(&headers(COOKIE, pair), &other),
            "a new token ends sessions"
        );
        assert!(accepts("0123456789abcdef-token", &token));
        assert!(!accepts("", &token));
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let token = Secret::new("0123456789abcdef-token");
        let plain = set_cookie(&token, false);
        assert!(
            plain.ends_with("; Path=/ui; HttpOnly; SameSite=Strict"),
            "{plain}"
        );
        assert!(set_cookie(&token, true).ends_with("; SameSite=Strict; Secure"));
    }
}
