//! Where a metric provider may be sent: the address policy. A tenant writes a provider's `address`;
//! the controller sends the query with its own network position, so the policy, not the tenant,
//! decides what it may reach.
//!
//! A rule is a host (`prometheus.monitoring.svc`), a host pattern (`*.svc`, any name ending in
//! `.svc`), or an address range (`10.0.0.0/8`, `127.0.0.1`). A named host is allowed when it matches
//! a host rule; an address written in the URL when it is in an allowed range. Loopback, link-local
//! (cloud metadata endpoints), the other metadata endpoints (`100.100.100.200`, `fd00:ec2::254`),
//! unspecified and multicast addresses, and IPv6 addresses that carry one of them (NAT64, 6to4,
//! IPv4-mapped) are refused however an allowed name resolves, unless a range rule names them. Names are checked where they are resolved for the
//! connection itself (the HTTP client's resolver), so what is checked is what is reached.
//!
//! A name allowed only by an in-cluster pattern (`*.svc`, `*.svc.cluster.local`: the defaults)
//! must also resolve into the cluster's own ranges ([`ClusterRanges`]: its Service ranges and pod
//! ranges, named by flag or discovered), so that an `ExternalName` Service, or a name `pods
//! insecure` DNS answers with any address, reaches nothing outside the cluster. A host rule and a
//! range rule are the operator's own word and are taken as written.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

/// The rules a default controller runs with: in-cluster Service names only.
pub const DEFAULT_RULES: [&str; 2] = ["*.svc", "*.svc.cluster.local"];

/// One rule of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// This host exactly (case-insensitive).
    Host(String),
    /// Any host ending in `.SUFFIX` (written `*.SUFFIX`).
    Suffix(String),
    /// Any address in this range.
    Range(IpNet),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty address rule".to_owned());
        }
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self::Range(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Range(IpNet::from(ip)));
        }
        let valid = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if let Some(suffix) = text.strip_prefix("*.") {
            if valid(suffix) {
                return Ok(Self::Suffix(suffix.to_ascii_lowercase()));
            }
        } else if valid(text) {
            return Ok(Self::Host(text.to_ascii_lowercase()));
        }
        Err(format!(
            "{text:?} is not an address rule: write a host (prometheus.monitoring.svc), a host \
             pattern (*.svc) or an address range (10.0.0.0/8, 127.0.0.1)"
        ))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(host) => write!(f, "{host}"),
            Self::Suffix(suffix) => write!(f, "*.{suffix}"),
            Self::Range(net) => write!(f, "{net}"),
        }
    }
}

impl Rule {
    /// A pattern for the cluster's own Service names (`*.svc`, `*.svc.DOMAIN`), whose addresses
    /// must be the cluster's.
    fn in_cluster(&self) -> bool {
        matches!(self, Self::Suffix(suffix) if suffix == "svc" || suffix.starts_with("svc."))
    }
}

/// The cluster's own address ranges (Service and pod ranges), which names allowed by an
/// in-cluster pattern must resolve into. Set once from the operator's flags, or kept up to date by
/// discovery; until known, such names are refused, saying why.
#[derive(Debug)]
pub struct ClusterRanges {
    known: std::sync::RwLock<Result<Vec<IpNet>, String>>,
}

impl Default for ClusterRanges {
    fn default() -> Self {
        Self::unknown("they have not been discovered yet")
    }
}

impl ClusterRanges {
    /// Ranges named by the operator.
    pub fn fixed(ranges: Vec<IpNet>) -> Self {
        Self {
            known: std::sync::RwLock::new(Ok(ranges)),
        }
    }

    /// Not known, for the reason given.
    pub fn unknown(why: &str) -> Self {
        Self {
            known: std::sync::RwLock::new(Err(why.to_owned())),
        }
    }

    /// What discovery found: the ranges, or why they could not be read.
    pub fn set(&self, found: Result<Vec<IpNet>, String>) {
        if let Ok(mut known) = self.known.write() {
            *known = found;
        }
    }

    /// The ranges, or why they are not known.
    pub fn get(&self) -> Result<Vec<IpNet>, String> {
        self.known
            .read()
            .map_err(|_| "they could not be read".to_owned())
            .and_then(|known| known.clone())
    }
}

/// The addresses a provider may be sent to.
#[derive(Clone, Debug)]
pub struct AddressPolicy {
    allow: Vec<Rule>,
    cluster: Arc<ClusterRanges>,
}

impl PartialEq for AddressPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.allow == other.allow && Arc::ptr_eq(&self.cluster, &other.cluster)
    }
}

impl Eq for AddressPolicy {}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self::new(
            DEFAULT_RULES
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
        )
    }
}

impl fmt::Display for AddressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        write!(f, "{}", rules.join(", "))
    }
}

/// Why an address is refused, naming the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the address policy denies {what}: {why}")]
pub struct Denied {
    what: String,
    why: String,
}

impl AddressPolicy {
    /// A policy allowing what `rules` name and nothing else (in-cluster patterns only once the
    /// cluster's ranges are known: see [`Self::with_cluster_ranges`]).
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            allow: rules,
            cluster: Arc::default(),
        }
    }

    /// The same rules, with the cluster's ranges read from `cluster`.
    pub fn with_cluster_ranges(mut self, cluster: Arc<ClusterRanges>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The host rules that allow `name` (lower case, no trailing dot).
    fn host_rules<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.allow.iter().filter(move |rule| match rule {
            Rule::Host(h) => h == name,
            Rule::Suffix(s) => name.ends_with(&format!(".{s}")),
            Rule::Range(_) => false,
        })
    }

    /// Checks the host of a URL before anything is sent: a name must match a host rule (what it
    /// resolves to is checked at connection time, see [`PolicyResolver`]); an address written in
    /// the URL must be in an allowed range.
    pub fn check_host(&self, host: &str) -> Result<(), Denied> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(host, ip);
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if self.host_rules(&name).next().is_some() {
            Ok(())
        } else {
            Err(Denied {
                what: name,
                why: format!("no host rule allows it (allowed: {self})"),
            })
        }
    }

    /// Checks one address `host` resolved to (or was written as).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Denied> {
        let ranged = self.allow.iter().any(|rule| match rule {
            Rule::Range(net) => net.contains(&ip),
            _ => false,
        });
        if ranged {
            return Ok(());
        }
        if let Some(kind) = special(ip) {
            return Err(Denied {
                what: describe(host, ip),
                why: format!(
                    "{kind} addresses are never reached unless a range rule names them (allowed: {self})"
                ),
            });
        }
        Err(Denied {
            what: describe(host, ip),
            why: format!("no rule allows it (allowed: {self})"),
        })
    }

    /// Checks what an allowed name resolved to: never a special address a range rule does not
    /// name, and, for a name only an in-cluster pattern allows, only the cluster's addresses.
    pub fn check_resolved(&self, host: &str, ips: &[IpAddr]) -> Result<(), Denied> {
        self.check_host(host)?;
        for ip in ips {
            if special(*ip).is_some() {
                self.check_ip(host, *ip)?;
            }
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if !self.host_rules(&name).all(Rule::in_cluster) {
            return Ok(());
        }
        let ranged = |ip: &IpAddr| {
            self.allow
                .iter()
                .any(|rule| matches!(rule, Rule::Range(net) if net.contains(ip)))
        };
        let cluster = self.cluster.get().map_err(|why| Denied {
            what: name.clone(),
            why: format!(
                "an in-cluster name must resolve into the cluster's address ranges, and {why} \
                 (name them with --cluster-address-range, the chart's clusterAddressRanges)"
            ),
        })?;
        match ips
            .iter()
            .find(|ip| !ranged(ip) && !cluster.iter().any(|net| net.contains(*ip)))
        {
            None => Ok(()),
            Some(ip) => {
                let ranges: Vec<String> = cluster.iter().map(ToString::to_string).collect();
                Err(Denied {
                    what: describe(host, *ip),
                    why: format!(
                        "an in-cluster name must resolve into the cluster's address ranges ({}), \
                         as a Service's does (an ExternalName Service's does not); a host or range \
                         rule allows it",
                        if ranges.is_empty() {
                            "none".to_owned()
                        } else {
                            ranges.join(", ")
                        }
                    ),
                })
            }
        }
    }
}

/// The host of a URL as the HTTP client reads it (an IPv6 address in brackets), if it has one:
/// what a check of where a request goes must look at.
pub fn url_host(url: &str) -> Option<String> {
    reqwest::Url::parse(url.trim())
        .ok()?
        .host_str()
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
}

fn describe(host: &str, ip: IpAddr) -> String {
    if host.trim_start_matches('[').trim_end_matches(']') == ip.to_string() {
        ip.to_string()
    } else {
        format!("{host} ({ip})")
    }
}

/// The kind of an address no name may resolve to without a range rule naming it.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if METADATA_V4.contains(&v4) {
                Some("cloud metadata")
            } else if v4.octets()[0] == 0 {
                // 0.0.0.0/8, "this network": 0.0.0.0 itself reaches the local host.
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return special(IpAddr::V4(v4));
            }
            if METADATA_V6.contains(&v6) {
                return Some("cloud metadata");
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Cloud metadata endpoints outside the link-local range (Alibaba Cloud's).
const METADATA_V4: [std::net::Ipv4Addr; 1] = [std::net::Ipv4Addr::new(100, 100, 100, 200)];

/// Cloud metadata endpoints reached over IPv6 (AWS's `fd00:ec2::254`).
const METADATA_V6: [std::net::Ipv6Addr; 1] = [std::net::Ipv6Addr::new(
    0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254,
)];

/// The IPv4 address an IPv6 address carries to reach it: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`, `64:ff9b:1::/48`) or 6to4
/// (`2002:AABB:CCDD::`), so that `64:ff9b::a9fe:a9fe` is the metadata endpoint it translates to.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let last = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match s {
        // ::a.b.c.d, but not :: or ::1 (unspecified and loopback themselves).
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(last(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(last(hi, lo)),
        [0x64, 0xff9b, 1, ..] => Some(last(s[6], s[7])),
        [0x2002, hi, lo, ..] => Some(last(hi, lo)),
        _ => None,
    }
}

/// The HTTP client's resolver: resolves a name as the system does, then refuses it unless the
/// policy allows every address it resolved to.
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    pub policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            policy.check_resolved(&host, &ips)?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> AddressPolicy {
        AddressPolicy::new(rules.iter().map(|r| r.parse().expect("rule")).collect())
            .with_cluster_ranges(testbed_ranges())
    }

    /// A cluster whose Services are in 10.96.0.0/16 and pods in 10.244.0.0/16.
    fn testbed_ranges() -> Arc<ClusterRanges> {
        Arc::new(ClusterRanges::fixed(vec![
            "10.96.0.0/16".parse().expect("range"),
            "10.244.0.0/16".parse().expect("range"),
        ]))
    }

    fn in_cluster() -> AddressPolicy {
        AddressPolicy::default().with_cluster_ranges(testbed_ranges())
    }

    /// A `*.svc` name reaches only the cluster's addresses: an ExternalName Service (or a name
    /// that `pods insecure` DNS answers with any address) pointing at a node, the internet or
    /// another network is refused; a host rule or a range rule the operator wrote lets it through.
    #[test]
    fn in_cluster_names_resolve_into_the_clusters_ranges_only() {
        let policy = in_cluster();
        for inside in ["10.96.0.10", "10.244.3.7"] {
            assert!(
                policy
                    .check_resolved("prometheus.monitoring.svc", &[ip(inside)])
                    .is_ok(),
                "{inside}"
            );
        }
        for outside in ["198.18.0.1", "93.184.216.34", "192.168.1.10", "2001:db8::1"] {
            let denied = policy
                .check_resolved("elsewhere.tenant.svc.cluster.local", &[ip(outside)])
                .expect_err(outside);
            assert!(
                denied.to_string().contains("cluster's address ranges")
                    && denied.to_string().contains("10.96.0.0/16"),
                "{outside}: {denied}"
            );
        }
        // One address outside among several is enough to refuse the name.
        assert!(
            policy
                .check_resolved("web.tenant.svc", &[ip("10.96.0.10"), ip("93.184.216.34")])
                .is_err()
        );
        // Unknown ranges refuse in-cluster names, saying what to do.
        let unknown = AddressPolicy::default().with_cluster_ranges(Arc::new(
            ClusterRanges::unknown("listing ServiceCIDRs was forbidden"),
        ));
        let denied = unknown
            .check_resolved("prometheus.monitoring.svc", &[ip("10.96.0.10")])
            .expect_err("unknown");
        assert!(
            denied.to_string().contains("forbidden")
                && denied.to_string().contains("--cluster-address-range"),
            "{denied}"
        );
        // The operator's own rules are taken as written.
        for rules in [
            &["*.svc", "prometheus.monitoring.svc"][..],
            &["*.svc", "198.18.0.0/24"][..],
        ] {
            assert!(
                policy_with(rules)
                    .check_resolved("prometheus.monitoring.svc", &[ip("198.18.0.1")])
                    .is_ok(),
                "{rules:?}"
            );
        }
        assert!(
            policy_with(&["*.internal"])
                .check_resolved("db.internal", &[ip("192.0.2.1")])
                .is_ok()
        );
    }

    fn policy_with(rules: &[&str]) -> AddressPolicy {
        policy(rules)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "*.svc",
            "prometheus.monitoring.svc",
            "10.0.0.0/8",
            "fd00::/8",
        ] {
            assert_eq!(text.parse::<Rule>().expect("rule").to_string(), text);
        }
        assert_eq!(
            "127.0.0.1".parse::<Rule>().expect("rule").to_string(),
            "127.0.0.1/32"
        );
        for bad in ["", "*", "*.", "a..b", "http://x", "a b", "10.0.0.0/33"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_default_allows_in_cluster_service_names_only() {
        let policy = in_cluster();
        assert_eq!(policy.check_host("prometheus.monitoring.svc"), Ok(()));
        assert_eq!(
            policy.check_host("Prometheus.Monitoring.svc.cluster.local."),
            Ok(())
        );
        let denied = policy
            .check_host("prometheus.example.com")
            .expect_err("outside");
        assert!(
            denied.to_string().contains("no host rule allows it")
                && denied.to_string().contains("*.svc"),
            "{denied}"
        );
        // A bare name resolves in the controller's own namespace: not a tenant's to reach.
        assert!(policy.check_host("sluice-controller").is_err());
        let denied = policy.check_host("169.254.169.254").expect_err("metadata");
        assert!(denied.to_string().contains("link-local"), "{denied}");
        // A Service name that resolves to a special address is still refused.
        let denied = policy
            .check_resolved("evil.tenant.svc", &[ip("127.0.0.1")])
            .expect_err("loopback");
        assert!(
            denied.to_string().contains("evil.tenant.svc (127.0.0.1)")
                && denied.to_string().contains("loopback"),
            "{denied}"
        );
        assert!(
            policy
                .check_resolved("prometheus.monitoring.svc", &[ip("10.96.0.12")])
                .is_ok()
        );
    }

    #[test]
    fn ranges_allow_addresses_written_in_the_url() {
        let policy = policy(&["127.0.0.1", "10.0.0.0/8", "*.internal"]);
        assert_eq!(policy.check_host("127.0.0.1"), Ok(()));
        assert!(policy.check_host("[::1]").is_err());
        assert!(policy.check_host("127.0.0.2").is_err());
        assert!(policy.check_host("10.1.2.3").is_ok());
        assert!(
            policy
                .check_resolved("db.internal", &[ip("192.0.2.1")])
                .is_ok()
        );
        assert!(
            policy
                .check_resolved("db.internal", &[ip("127.0.0.1")])
                .is_ok()
        );
        assert!(
            policy
                .check_resolved("db.internal", &[ip("127.0.0.5")])
                .is_err()
        );
        // An IPv4-mapped IPv6 loopback is loopback.
        assert!(
            policy
                .check_ip("x", ip("::ffff:127.0.0.2"))
                .expect_err("mapped")
                .to_string()
                .contains("loopback")
        );
        assert!(policy.check_ip("x", ip("fe80::1")).is_err());
    }

    /// Metadata endpoints outside 169.254/16, and IPv6 addresses that carry a refused IPv4 one, are
    /// refused as the addresses they reach.
    #[test]
    fn metadata_endpoints_and_translated_addresses_are_refused() {
        let policy = in_cluster();
        for (address, kind) in [
            ("100.100.100.200", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("64:ff9b:1::a9fe:a9fe", "link-local"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("::7f00:1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("0.1.2.3", "unspecified"),
        ] {
            let denied = policy
                .check_resolved("prometheus.monitoring.svc", &[ip(address)])
                .expect_err(address);
            assert!(denied.to_string().contains(kind), "{address}: {denied}");
        }
        assert!(
            special(ip("64:ff9b::a00:1")).is_none(),
            "a translated private address is not special"
        );
    }
}
