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
use crate::ui::error::UiError;

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

/// Compares digests, not the texts: a comparison of texts of different lengths returns at
/// once, which would tell a guesser the token's length.
fn equal(given: &str, expected: &str) -> bool {
    use sha2::Digest as _;
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    !expected.is_empty() && bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// Without a token, the view answers only a request addressed to this machine's loopback
/// (`Host` of `127.0.0.1`, `[::1]` or `localhost`) on a loopback admin address: a page on
/// another site can point a name of its own at 127.0.0.1 (DNS rebinding) and read what the
/// browser fetches, but it cannot make the browser send a loopback `Host`; and an admin
/// address opened to the network for Prometheus must not open the view with it.
///
/// # Errors
/// [`UiError::Forbidden`], saying which and what to do.
pub fn local_only<B>(
    request: &http::Request<B>,
    admin: std::net::SocketAddr,
) -> Result<(), UiError> {
    if !admin.ip().is_loopback() {
        return Err(UiError::Forbidden(format!(
            "server.admin_listen is {admin}, beyond this machine: the web view is served there \
             only with a [ui] token"
        )));
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    if is_loopback_host(host) {
        Ok(())
    } else {
        Err(UiError::Forbidden(format!(
            "Host {host:?} is not this machine's loopback: without a [ui] token the web view \
             answers only http://127.0.0.1, [::1] or localhost"
        )))
    }
}

/// Whether a `Host` value (with or without its port) names the loopback.
fn is_loopback_host(host: &str) -> bool {
    let port_ok = |port: &str| {
        port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) if port_ok(port) => name,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if port_ok(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    fn without_a_token_only_loopback_hosts_on_a_loopback_address_are_served() {
        let request = |host: &str| {
            http::Request::get("/ui/")
                .header(http::header::HOST, host)
                .body(())
                .unwrap()
        };
        let local: std::net::SocketAddr = "127.0.0.1:9091".parse().unwrap();
        for host in [
            "127.0.0.1:9091",
            "localhost:9091",
            "LOCALHOST",
            "[::1]:9091",
            "127.0.0.2",
        ] {
            assert!(local_only(&request(host), local).is_ok(), "{host}");
        }
        for host in [
            "attacker.example:9091",
            "127.0.0.1.nip.io",
            "10.0.0.5:9091",
            "",
            "[::1",
            "[::1]junk",
            "localhost:junk",
            "localhost:",
        ] {
            let err = local_only(&request(host), local).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::FORBIDDEN, "{host}");
        }
        let open: std::net::SocketAddr = "0.0.0.0:9091".parse().unwrap();
        assert_eq!(
            local_only(&request("127.0.0.1:9091"), open)
                .unwrap_err()
                .to_string(),
            "server.admin_listen is 0.0.0.0:9091, beyond this machine: the web view is served \
             there only with a [ui] token"
        );
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
