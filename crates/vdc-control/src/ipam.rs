//! Address management for networks: parsing and checking a network's
//! subnet and pool, and the candidate addresses of a pool (pure).

use std::net::Ipv4Addr;

/// A parsed IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parses `A.B.C.D/N`; the host bits must be zero.
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet '{s}' must be in CIDR form, e.g. 10.77.0.0/24"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("'{addr}' in subnet '{s}' is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| {
                format!("prefix length '{len}' of subnet '{s}' must be between 8 and 30")
            })?;
        let sn = Subnet { network, prefix };
        if u32::from(network) & !sn.mask() != 0 {
            return Err(format!(
                "subnet '{s}' has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(network) & sn.mask())
            ));
        }
        Ok(sn)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// Whether `a` is a usable host address of the subnet.
    pub fn contains_host(&self, a: Ipv4Addr) -> bool {
        let n = u32::from(self.network);
        let x = u32::from(a);
        x & self.mask() == n && x != n && x != (n | !self.mask())
    }
}

/// Parses an address that must be a host of `subnet`.
pub fn parse_host(subnet: &Subnet, s: &str, what: &str) -> Result<Ipv4Addr, String> {
    let a: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{what} '{s}' is not an IPv4 address"))?;
    if !subnet.contains_host(a) {
        return Err(format!(
            "{what} {a} is not a host address of subnet {}/{}",
            subnet.network, subnet.prefix
        ));
    }
    Ok(a)
}

/// The pool's addresses in order, skipping `gateway`.
pub fn pool(
    start: Ipv4Addr,
    end: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> {
    (u32::from(start)..=u32::from(end))
        .map(Ipv4Addr::from)
        .filter(move |a| Some(*a) != gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.77.0.0/24").unwrap();
        assert!(s.contains_host("10.77.0.5".parse().unwrap()));
        assert!(!s.contains_host("10.77.0.0".parse().unwrap()));
        assert!(!s.contains_host("10.77.0.255".parse().unwrap()));
        assert!(!s.contains_host("10.77.1.5".parse().unwrap()));
        assert!(Subnet::parse("10.77.0.1/24").is_err());
        assert!(Subnet::parse("10.77.0.0").is_err());
        assert!(Subnet::parse("10.77.0.0/33").is_err());
        assert!(Subnet::parse("x/24").is_err());
    }

    #[test]
    fn pools_skip_gateway() {
        let v: Vec<_> = pool(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
            Some("10.0.0.2".parse().unwrap()),
        )
        .collect();
        assert_eq!(
            v,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]
        );
    }
}
