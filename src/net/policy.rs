//! Which addresses weft may open a connection to.
//!
//! A remote party chooses the names weft dials (a server name, a `.well-known` delegation, an
//! SRV target, later a push gateway or a media URL), so every one of them could point into
//! the network weft runs in. The rule is applied to the **address actually connected to**
//! (after DNS, for IP literals too), never to the name: a name that resolves to a special
//! address is refused the same as the literal.
//!
//! Refused unless the allow-list names them: every range IANA marks as not globally
//! reachable or reserved, plus the IPv6 ranges that embed an IPv4 address (mapped,
//! NAT64, 6to4, Teredo), judged by the embedded address — see [`special_range`]. The
//! allow-list (`outbound.allowed_addresses`, CIDRs or single addresses) admits exactly what it
//! names; tests put their own loopback peers on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The outbound address policy (cheap to clone; built once from the config).
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    /// Everything allowed (the old `federation.allow_private_addresses = true`).
    allow_all: bool,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is in {range} and not on outbound.allowed_addresses")]
pub struct Refused {
    pub addr: IpAddr,
    pub range: &'static str,
}

impl AddressPolicy {
    /// Parses the allow-list (`"127.0.0.1"`, `"10.0.0.0/8"`, `"::1/128"`).
    pub fn new(allowed: &[String], allow_all: bool) -> Result<Self, String> {
        let mut allow = Vec::with_capacity(allowed.len());
        for a in allowed {
            let net = match a.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match a.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("{a:?} is neither an address nor a CIDR")),
                },
            };
            allow.push(net.trunc());
        }
        Ok(Self { allow, allow_all })
    }

    /// Allows everything (unit tests of other modules).
    pub fn allow_all() -> Self {
        Self {
            allow: Vec::new(),
            allow_all: true,
        }
    }

    /// Whether weft may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = canonical(ip);
        if self.allow_all || self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match special_range(ip) {
            Some(range) => Err(Refused { addr: ip, range }),
            None => Ok(()),
        }
    }
}

/// An IPv4-mapped IPv6 address is its IPv4 address (the socket reaches that host).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The special-purpose range `ip` falls in, or `None` for a globally reachable address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "0.0.0.0/8 (this network)"),
        ([10, 0, 0, 0], 8, "10.0.0.0/8 (private)"),
        (
            [100, 64, 0, 0],
            10,
            "100.64.0.0/10 (shared address space, CGNAT)",
        ),
        ([127, 0, 0, 0], 8, "127.0.0.0/8 (loopback)"),
        ([169, 254, 0, 0], 16, "169.254.0.0/16 (link-local)"),
        ([172, 16, 0, 0], 12, "172.16.0.0/12 (private)"),
        (
            [192, 0, 0, 0],
            24,
            "192.0.0.0/24 (IETF protocol assignments)",
        ),
        ([192, 0, 2, 0], 24, "192.0.2.0/24 (documentation)"),
        ([192, 88, 99, 0], 24, "192.88.99.0/24 (6to4 relay anycast)"),
        ([192, 168, 0, 0], 16, "192.168.0.0/16 (private)"),
        ([198, 18, 0, 0], 15, "198.18.0.0/15 (benchmarking)"),
        ([198, 51, 100, 0], 24, "198.51.100.0/24 (documentation)"),
        ([203, 0, 113, 0], 24, "203.0.113.0/24 (documentation)"),
        ([224, 0, 0, 0], 4, "224.0.0.0/4 (multicast)"),
        ([240, 0, 0, 0], 4, "240.0.0.0/4 (reserved, broadcast)"),
    ];
    let x = u32::from(ip);
    RANGES.iter().find_map(|(base, len, name)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        (x & mask == u32::from_be_bytes(*base)).then_some(*name)
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let x = u128::from(ip);
    let in_net = |base: u128, len: u32| {
        let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
        x & mask == base
    };
    if ip.is_unspecified() {
        return Some("::/128 (unspecified)");
    }
    if ip.is_loopback() {
        return Some("::1/128 (loopback)");
    }
    // IPv4-compatible (deprecated) ::/96.
    if in_net(0, 96) {
        return Some("::/96 (IPv4-compatible)");
    }
    // NAT64: the embedded IPv4 address is where the packets go; refuse the whole prefix
    // (the well-known one and the local-use one) rather than trust the embedded part.
    if in_net(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        return Some("64:ff9b::/96 (NAT64)");
    }
    if in_net(0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48) {
        return Some("64:ff9b:1::/48 (local NAT64)");
    }
    if in_net(0x0100_0000_0000_0000_0000_0000_0000_0000, 64) {
        return Some("100::/64 (discard)");
    }
    if in_net(0x2001_0000_0000_0000_0000_0000_0000_0000, 32) {
        return Some("2001::/32 (Teredo)");
    }
    if in_net(0x2001_0000_0000_0000_0000_0000_0000_0000, 23) {
        return Some("2001::/23 (IETF protocol assignments)");
    }
    if in_net(0x2001_0db8_0000_0000_0000_0000_0000_0000, 32) {
        return Some("2001:db8::/32 (documentation)");
    }
    if in_net(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        return Some("2002::/16 (6to4)");
    }
    if in_net(0x3fff_0000_0000_0000_0000_0000_0000_0000, 20) {
        return Some("3fff::/20 (documentation)");
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        return Some("fc00::/7 (unique local)");
    }
    if (s[0] & 0xffc0) == 0xfe80 {
        return Some("fe80::/10 (link-local)");
    }
    if (s[0] & 0xffc0) == 0xfec0 {
        return Some("fec0::/10 (site-local, deprecated)");
    }
    if (s[0] & 0xff00) == 0xff00 {
        return Some("ff00::/8 (multicast)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_by_default() {
        let p = AddressPolicy::default();
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.5.5",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(p.check(ip(a)).is_err(), "{a} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let p = AddressPolicy::default();
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2001:4860::8888",
            "2a00:1450::1",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a} should pass");
        }
    }

    #[test]
    fn allow_list_admits_exactly_what_it_names() {
        let p = AddressPolicy::new(
            &["127.0.0.1".into(), "10.9.0.0/16".into(), "::1".into()],
            false,
        )
        .unwrap();
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(p.check(ip("127.0.0.2")).is_err());
        assert_eq!(p.check(ip("10.9.200.1")), Ok(()));
        assert!(p.check(ip("10.8.0.1")).is_err());
        assert_eq!(p.check(ip("::1")), Ok(()));
        assert!(p.check(ip("fe80::1")).is_err());
        // Host bits in a CIDR are ignored rather than narrowing the net.
        let p = AddressPolicy::new(&["192.168.1.77/24".into()], false).unwrap();
        assert_eq!(p.check(ip("192.168.1.3")), Ok(()));
        assert!(p.check(ip("192.168.2.3")).is_err());
        assert!(AddressPolicy::new(&["localhost".into()], false).is_err());
        assert!(AddressPolicy::new(&["10.0.0.0/33".into()], false).is_err());
    }

    #[test]
    fn allow_all_allows_everything() {
        let p = AddressPolicy::allow_all();
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("fe80::1")), Ok(()));
    }
}
