//! The client's address: the TCP peer, or, when the peer is a configured trusted proxy, the
//! nearest untrusted hop of `X-Forwarded-For`. Allowlists are checked against it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client address of a request from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_in(peer, trusted) {
        // Anyone can write X-Forwarded-For; only a trusted proxy's word counts.
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(canonical(ip)),
                // A hop we cannot read ends what we can believe.
                Err(_) => return peer,
            }
        }
    }
    // Walk from the nearest hop back; the first one that is not our proxy is the client.
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_in(hop, trusted) {
            break;
        }
    }
    client
}

/// True when `ip` is in one of `nets`.
pub fn is_in(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// `::ffff:192.0.2.1` (an IPv4 peer on a dual-stack socket) → `192.0.2.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Untrusted peer: header ignored.
        assert_eq!(
            client_ip(ip("198.51.100.7"), &headers("203.0.113.9"), &trusted),
            ip("198.51.100.7")
        );
        // Trusted peer: nearest untrusted hop, spoofed left part ignored.
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &headers("1.2.3.4, 203.0.113.9, 10.0.0.2"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        // Unparseable hop: fall back to the peer.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers("junk"), &trusted),
            ip("10.0.0.1")
        );
        // Mapped IPv4 peers match IPv4 networks.
        assert!(is_in(ip("::ffff:10.1.2.3"), &trusted));
    }
}
