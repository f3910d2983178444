//! Who is asking: the client's address as far as it can be trusted, for per-client limits.
//!
//! The backend stands behind the gateway, which appends the peer it saw as the last
//! `X-Forwarded-For` entry. Every entry left of the nearest trusted hop is whatever the
//! client chose to send, so the address is read from the right: the TCP peer, unless the
//! peer is a trusted proxy (`TB_TRUSTED_PROXIES`), in which case the rightmost entry that is
//! not itself a trusted proxy. A header longer than [`MAX_FORWARDED_BYTES`] or an entry that
//! is not an address makes the chain unreadable, and then the peer is the answer: a proxy
//! that sends garbage shares one limit among its clients rather than letting any of them
//! pick an address.
//!
//! Limits key IPv6 clients by their /64 ([`ClientIp::bucket`]), because one subscriber
//! usually holds a whole /64 and could otherwise rotate addresses past any per-address limit.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;
use serde::Deserialize;

use crate::state::AppState;

/// `X-Forwarded-For` beyond this (all of its lines together) is ignored: no honest chain of
/// proxies is that long, and the walk stays bounded.
pub const MAX_FORWARDED_BYTES: usize = 1024;

/// An address or a network (`10.0.0.0/8`, `::1`, `fd00::/8`): an [`IpNet`] that also
/// takes a bare address and refuses host bits.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// The default trusted proxies: loopback, where the all-in-one gateway and a local one live.
    pub fn loopback() -> Vec<Cidr> {
        ["127.0.0.0/8", "::1/128"].iter().map(|n| Cidr(n.parse().expect("a valid network"))).collect()
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip.to_canonical()),
            Err(_) => s.parse::<IpNet>().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?,
        };
        if net.trunc() != net {
            // 10.1.2.3/8 is more likely a typo than a wish for 10.0.0.0/8.
            return Err(format!("{s:?} has host bits set (did you mean {}?)", net.trunc()));
        }
        Ok(Cidr(net))
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a comma-separated list (the `TB_TRUSTED_PROXIES` form).
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',').filter(|e| !e.trim().is_empty()).map(str::parse).collect()
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// One `X-Forwarded-For` entry: an address, bare or with a port (`[::1]:80`, `1.2.3.4:5`).
fn parse_entry(e: &str) -> Option<IpAddr> {
    let e = e.trim();
    let ip = e.parse::<IpAddr>().ok().or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// The client of a request that arrived from `peer` with `headers` (see the module doc).
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    let lines = headers.get_all("x-forwarded-for");
    if lines.iter().map(|v| v.len()).sum::<usize>() > MAX_FORWARDED_BYTES {
        return peer;
    }
    // Several lines are one list in order (RFC 9110 §5.3), so the last line holds the
    // rightmost entries.
    let mut furthest = None;
    for line in lines.iter().rev() {
        let Ok(line) = line.to_str() else { return peer };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry) else { return peer };
            if !trusted(ip, proxies) {
                return ip;
            }
            furthest = Some(ip);
        }
    }
    // Every hop is trusted (a browser on the proxy's own host): the first is the client.
    furthest.unwrap_or(peer)
}

/// The client's address (see the module doc). Without connection info (a router driven in
/// process by tests) the peer is `0.0.0.0`, which is not trusted, so all such requests share
/// one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The key per-client limits count under: the address, or its /64 for IPv6.
    pub fn bucket(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(a) => IpAddr::V4(a),
            IpAddr::V6(a) => IpAddr::V6(ipnet::Ipv6Net::new_assert(a, 64).network()),
        }
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientIp(resolve(peer, &parts.headers, &state.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", l.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped IPv6 is IPv4");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains(ip("fd12::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "10.1.2.3/8", "example.com", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(parse_list("127.0.0.0/8, ::1,").unwrap(), Cidr::loopback());
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let lo = Cidr::loopback();
        let mut proxies = lo.clone();
        proxies.push("10.0.0.0/8".parse().unwrap());
        let h = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.5"]);
        // An untrusted peer's header is the peer's own say-so.
        assert_eq!(resolve(ip("9.9.9.9"), &h, &proxies), ip("9.9.9.9"));
        assert_eq!(resolve(ip("127.0.0.1"), &h, &proxies), ip("1.2.3.4"));
        assert_eq!(resolve(ip("127.0.0.1"), &h, &lo), ip("10.0.0.5"));
        // Lines are one list: the last line is the right end.
        assert_eq!(resolve(ip("127.0.0.1"), &xff(&["1.1.1.1", "2.2.2.2"]), &lo), ip("2.2.2.2"));
        assert_eq!(resolve(ip("::ffff:127.0.0.1"), &xff(&["[2001:db8::1]:443"]), &lo), ip("2001:db8::1"));
        assert_eq!(resolve(ip("127.0.0.1"), &xff(&["5.5.5.5:80"]), &lo), ip("5.5.5.5"));
        // All trusted: the furthest hop. No header: the peer.
        assert_eq!(resolve(ip("127.0.0.1"), &xff(&["127.0.0.9, ::1"]), &lo), ip("127.0.0.9"));
        assert_eq!(resolve(ip("127.0.0.1"), &HeaderMap::new(), &lo), ip("127.0.0.1"));
    }

    #[test]
    fn unreadable_chains_fall_back_to_the_peer() {
        let lo = Cidr::loopback();
        for bad in ["unknown", "1.2.3.4,,", "1.2.3.4, not-an-ip", "1.2.3.4 5.6.7.8"] {
            assert_eq!(resolve(ip("127.0.0.1"), &xff(&[bad]), &lo), ip("127.0.0.1"), "{bad}");
        }
        // A spoofed entry left of garbage is never reached, one right of it is the answer.
        assert_eq!(resolve(ip("127.0.0.1"), &xff(&["garbage, 1.2.3.4"]), &lo), ip("1.2.3.4"));
        let long = vec!["1.2.3.4"; 200].join(", ");
        assert_eq!(resolve(ip("127.0.0.1"), &xff(&[&long]), &lo), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a = ClientIp(ip("2001:db8:1:2:aaaa::1")).bucket();
        assert_eq!(a, ClientIp(ip("2001:db8:1:2:ffff::9")).bucket());
        assert_ne!(a, ClientIp(ip("2001:db8:1:3::1")).bucket());
        assert_eq!(ClientIp(ip("1.2.3.4")).bucket(), ip("1.2.3.4"));
    }
}
