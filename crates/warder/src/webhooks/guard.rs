//! The SSRF guard of webhook delivery: which addresses a webhook may reach.
//!
//! A webhook URL is chosen by a caller, so without this guard it would let
//! anyone with a key make the gateway call its own network (cloud metadata,
//! databases, admin ports). The rule: loopback, private, link-local, CGNAT,
//! unspecified, multicast, reserved and metadata addresses — also when
//! written as IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 — are refused
//! unless inside `webhook_allowed_cidrs`. Host names are resolved here, every
//! resolved address is checked, and the connection is made only to the
//! checked addresses (the HTTP client gets them from [`GuardedResolver`]), so
//! a second DNS answer cannot slip past the check. A DNS failure refuses.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a webhook target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address is in a refused range.
    #[error("webhook target {0} is a loopback, private, link-local or otherwise internal address")]
    Internal(IpAddr),
    /// The host name did not resolve.
    #[error("webhook host {0} could not be resolved")]
    Unresolvable(String),
    /// The URL is not an absolute http(s) URL with a host.
    #[error("webhook_endpoint must be an absolute http:// or https:// URL")]
    BadUrl,
}

/// The address filter: refused ranges minus the configured allow-list.
#[derive(Debug, Clone, Default)]
pub struct AddressFilter {
    allowed: Vec<IpNet>,
}

impl AddressFilter {
    /// A filter that lets `allowed` through (unparsable entries are ignored;
    /// configuration validation has refused them already).
    pub fn new(allowed: &[String]) -> AddressFilter {
        AddressFilter {
            allowed: allowed.iter().filter_map(|c| c.parse().ok()).collect(),
        }
    }

    /// Checks one address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let embedded = embedded_v4(ip);
        let allowed = |a: IpAddr| self.allowed.iter().any(|n| n.contains(&a));
        if allowed(ip) || embedded.is_some_and(|v4| allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        let internal = match ip {
            IpAddr::V4(v4) => is_internal_v4(v4),
            IpAddr::V6(v6) => match embedded {
                Some(v4) => is_internal_v4(v4),
                None => is_internal_v6(v6),
            },
        };
        if internal {
            Err(Refused::Internal(ip))
        } else {
            Ok(())
        }
    }

    /// Parses a webhook URL and checks its host when it is a literal address
    /// (what can be refused without DNS, at submit time).
    pub fn check_url(&self, url: &str) -> Result<url::Url, Refused> {
        let parsed = url::Url::parse(url).map_err(|_| Refused::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refused::BadUrl);
        }
        match parsed.host() {
            None => Err(Refused::BadUrl),
            Some(url::Host::Ipv4(v4)) => self.check(IpAddr::V4(v4)).map(|_| parsed),
            Some(url::Host::Ipv6(v6)) => self.check(IpAddr::V6(v6)).map(|_| parsed),
            Some(url::Host::Domain(_)) => Ok(parsed),
        }
    }

    /// Resolves a host name and checks every address; refuses if any is
    /// internal (a name that mixes public and internal answers is a
    /// rebinding attempt) or if none resolves.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refused::Unresolvable(host.to_owned()))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused::Unresolvable(host.to_owned()));
        }
        for a in &addrs {
            self.check(a.ip())?;
        }
        Ok(addrs)
    }
}

/// The IPv4 address an IPv6 address carries, in the forms a filter must
/// see through: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 well-known prefix (`64:ff9b::/96`) and 6to4
/// (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    const RANGES: [([u8; 4], u8); 15] = [
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT (also Alibaba's metadata 100.100.100.200)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata 169.254.169.254
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    RANGES.iter().any(|(net, p)| in_v4(ip, *net, *p))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata among them)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
}

/// A DNS resolver for the webhook HTTP client that answers only checked
/// addresses, so the client connects exactly to what the filter allowed.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    filter: Arc<AddressFilter>,
}

impl GuardedResolver {
    /// A resolver applying `filter`.
    pub fn new(filter: Arc<AddressFilter>) -> GuardedResolver {
        GuardedResolver { filter }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let filter = self.filter.clone();
        Box::pin(async move {
            let addrs = filter.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(filter: &AddressFilter, s: &str) -> bool {
        filter.check(s.parse().expect("ip")).is_err()
    }

    #[test]
    fn internal_ranges_are_refused() {
        let f = AddressFilter::default();
        for ip in [
            "169.254.169.254",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            // The same internal addresses in IPv6 clothing.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
        ] {
            assert!(refused(&f, ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let f = AddressFilter::default();
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!refused(&f, ip), "{ip} should pass");
        }
    }

    #[test]
    fn allowed_cidrs_open_exactly_their_range() {
        let f = AddressFilter::new(&["127.0.0.1/32".to_owned(), "fd12::/16".to_owned()]);
        assert!(!refused(&f, "127.0.0.1"));
        assert!(!refused(&f, "::ffff:127.0.0.1"));
        assert!(!refused(&f, "fd12::5"));
        assert!(refused(&f, "127.0.0.2"));
        assert!(refused(&f, "::1"));
        assert!(refused(&f, "169.254.169.254"));
        assert!(refused(&f, "10.0.0.1"));
    }

    #[test]
    fn literal_urls_are_checked_without_dns() {
        let f = AddressFilter::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://[::ffff:a9fe:a9fe]/",
            "http://0x7f000001/hook",
            "http://2130706433/hook",
            "http://127.1/hook",
        ] {
            assert!(
                matches!(f.check_url(url), Err(Refused::Internal(_))),
                "{url} should be refused"
            );
        }
        assert!(matches!(f.check_url("ftp://x/"), Err(Refused::BadUrl)));
        assert!(matches!(f.check_url("/relative"), Err(Refused::BadUrl)));
        assert!(f.check_url("https://hooks.example.com/x").is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        let f = AddressFilter::default();
        assert!(matches!(
            f.resolve("localhost", 80).await,
            Err(Refused::Internal(_))
        ));
        let allowed = AddressFilter::new(&["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        assert!(allowed.resolve("localhost", 80).await.is_ok());
    }
}
