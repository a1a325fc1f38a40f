//! Where a completion callback may go: the pure checks, no I/O.
//!
//! - A **NATS** callback must be a literal subject under the job's tenant namespace,
//!   `<root>.<tenant>.<token>[.<token>...]` (`root` is `callbacks` by default): no
//!   wildcards, no empty tokens, no whitespace or control characters, never a `$` or
//!   `_INBOX` subject and never under jetrun's own prefix. Otherwise a tenant could
//!   publish into another tenant's namespace, into the JetStream API (`$KV.<bucket>.<key>`
//!   overwrites a record) or onto jetrun's control subjects (`jetrun.job.cancel.<id>`).
//! - An **HTTP** callback must be an absolute `http`/`https` URL without userinfo, at most
//!   [`MAX_URL_LEN`] bytes. Which addresses it may reach is decided on the resolved
//!   address at connect time by the sender; [`classify`] says which addresses are refused
//!   by default, and [`Cidr`] is how operators allow some back.
//!
//! [`check`] runs at submission and, authoritatively, right before a callback is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::job::{Callback, JobSpec};

/// The default root of NATS callback subjects.
pub const DEFAULT_SUBJECT_ROOT: &str = "callbacks";
/// Longest NATS callback subject accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Longest HTTP callback URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// A callback that may not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The subject is not a valid literal NATS subject.
    #[error("callback subject {subject:?} is invalid: {reason}")]
    InvalidSubject {
        /// The subject asked for.
        subject: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The subject is reserved (`$...`, `_INBOX...` or jetrun's own prefix).
    #[error("callback subject {subject:?} is reserved: {reason}")]
    Reserved {
        /// The subject asked for.
        subject: String,
        /// Which reservation it hits.
        reason: String,
    },
    /// The subject is outside `<root>.<tenant>.>`.
    #[error("callback subject {subject:?} is outside the tenant's namespace {namespace}")]
    OutsideNamespace {
        /// The subject asked for.
        subject: String,
        /// The namespace it must be under (`<root>.<tenant>.>`).
        namespace: String,
    },
    /// The subject is in another tenant's namespace.
    #[error("callback subject {subject:?} belongs to tenant {found:?}, not the job's tenant {tenant:?}")]
    WrongTenant {
        /// The subject asked for.
        subject: String,
        /// The job's tenant.
        tenant: String,
        /// The tenant token in the subject.
        found: String,
    },
    /// The URL is not an acceptable absolute `http`/`https` URL.
    #[error("callback URL is invalid: {reason}")]
    InvalidUrl {
        /// Why.
        reason: String,
    },
    /// The callback's host is, or resolved to, an address that is refused.
    #[error("callback to {host} refused: address {addr} is {range}")]
    RefusedAddress {
        /// The URL's host.
        host: String,
        /// The address refused.
        addr: IpAddr,
        /// The range it is in.
        range: BlockedRange,
    },
}

/// Checks a job's callback, if any: see the module documentation. `root` is the NATS
/// callback root (e.g. [`DEFAULT_SUBJECT_ROOT`]), `prefix` jetrun's subject prefix
/// (`Names::prefix`). Pure: an HTTP URL is checked syntactically only.
pub fn check(spec: &JobSpec, root: &str, prefix: &str) -> Result<(), CallbackError> {
    match &spec.callback {
        None => Ok(()),
        Some(Callback::Nats(subject)) => check_subject(subject, spec.tenant(), root, prefix),
        Some(Callback::Http(url)) => check_url(url).map(|_| ()),
    }
}

/// Checks a NATS callback subject for `tenant`: see the module documentation.
pub fn check_subject(subject: &str, tenant: &str, root: &str, prefix: &str) -> Result<(), CallbackError> {
    let invalid = |reason| CallbackError::InvalidSubject {
        subject: subject.to_string(),
        reason,
    };
    let reserved = |reason: String| CallbackError::Reserved {
        subject: subject.to_string(),
        reason,
    };
    if subject.is_empty() {
        return Err(invalid("empty"));
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(invalid("longer than 256 bytes"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or a control character"));
    }
    // Any `*` or `>` is refused, not only whole-token wildcards: a subject that reads like
    // a wildcard is never what a literal callback meant.
    if subject.contains(['*', '>']) {
        return Err(invalid("contains a wildcard (`*` or `>`)"));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(invalid("has an empty token"));
    }
    if subject.starts_with('$') {
        return Err(reserved(
            "`$` subjects are the server's (JetStream API, KV, system)".into(),
        ));
    }
    if subject.starts_with("_INBOX") {
        return Err(reserved("`_INBOX` subjects are request replies".into()));
    }
    if subject == prefix || subject.starts_with(&format!("{prefix}.")) {
        return Err(reserved(format!("`{prefix}.` subjects are jetrun's own")));
    }
    let namespace = format!("{root}.{tenant}.>");
    let outside = || CallbackError::OutsideNamespace {
        subject: subject.to_string(),
        namespace: namespace.clone(),
    };
    let Some(rest) = subject.strip_prefix(root).and_then(|r| r.strip_prefix('.')) else {
        return Err(outside());
    };
    // `rest` is `<tenant>.<token>...`: the tenant is one token, and at least one follows.
    let Some((found, tail)) = rest.split_once('.') else {
        return Err(outside());
    };
    if found != tenant {
        return Err(CallbackError::WrongTenant {
            subject: subject.to_string(),
            tenant: tenant.to_string(),
            found: found.to_string(),
        });
    }
    if tail.is_empty() {
        return Err(outside());
    }
    Ok(())
}

/// Checks an HTTP callback URL syntactically and returns it parsed.
pub fn check_url(raw: &str) -> Result<url::Url, CallbackError> {
    let invalid = |reason: String| CallbackError::InvalidUrl { reason };
    if raw.len() > MAX_URL_LEN {
        return Err(invalid(format!("longer than {MAX_URL_LEN} bytes")));
    }
    // The URL parser silently drops tabs and newlines; refuse them instead.
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or a control character".into()));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("scheme {:?} is not http or https", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("contains userinfo (credentials)".into()));
    }
    match url.host() {
        None => return Err(invalid("has no host".into())),
        Some(url::Host::Domain("")) => return Err(invalid("has no host".into())),
        Some(_) => {}
    }
    Ok(url)
}

/// A range of addresses HTTP callbacks may not reach by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockedRange {
    /// A cloud instance metadata service (169.254.169.254, fd00:ec2::254).
    Metadata,
    /// Loopback (127/8, ::1).
    Loopback,
    /// Private (RFC 1918: 10/8, 172.16/12, 192.168/16).
    Private,
    /// Carrier-grade NAT shared space (100.64/10).
    SharedAddressSpace,
    /// Link-local (169.254/16, fe80::/10).
    LinkLocal,
    /// Unique-local IPv6 (fc00::/7) or deprecated site-local (fec0::/10).
    UniqueLocal,
    /// Unspecified or "this network" (0/8, ::).
    Unspecified,
    /// Multicast (224/4, ff00::/8).
    Multicast,
    /// Limited broadcast (255.255.255.255).
    Broadcast,
    /// Documentation (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20).
    Documentation,
    /// Benchmarking (198.18/15).
    Benchmarking,
    /// Reserved or special-purpose (240/4, 192.0.0/24, 100::/64, translation prefixes
    /// whose embedded address cannot be checked, ...).
    Reserved,
}

impl BlockedRange {
    /// A short name for logs and dead-letter reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedRange::Metadata => "a cloud metadata address",
            BlockedRange::Loopback => "loopback",
            BlockedRange::Private => "private (RFC 1918)",
            BlockedRange::SharedAddressSpace => "carrier-grade NAT space (100.64.0.0/10)",
            BlockedRange::LinkLocal => "link-local",
            BlockedRange::UniqueLocal => "unique-local",
            BlockedRange::Unspecified => "unspecified",
            BlockedRange::Multicast => "multicast",
            BlockedRange::Broadcast => "broadcast",
            BlockedRange::Documentation => "a documentation range",
            BlockedRange::Benchmarking => "a benchmarking range",
            BlockedRange::Reserved => "reserved",
        }
    }
}

impl std::fmt::Display for BlockedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The range `ip` is in if HTTP callbacks may not reach it by default; `None` for a
/// public address. IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64,
/// 6to4) are judged by that address.
pub fn classify(ip: IpAddr) -> Option<BlockedRange> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<BlockedRange> {
    use BlockedRange::*;
    let [a, b, c, _] = ip.octets();
    let r = match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => Metadata,
        _ if ip.is_broadcast() => Broadcast,
        (0, _, _) => Unspecified,
        (127, _, _) => Loopback,
        (10, _, _) => Private,
        (172, 16..=31, _) => Private,
        (192, 168, _) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (169, 254, _) => LinkLocal,
        (192, 0, 0) => Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (198, 18..=19, _) => Benchmarking,
        (192, 88, 99) => Reserved,
        (224..=239, _, _) => Multicast,
        (240..=255, _, _) => Reserved,
        _ => return None,
    };
    Some(r)
}

fn classify_v6(ip: Ipv6Addr) -> Option<BlockedRange> {
    use BlockedRange::*;
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some(Metadata);
    }
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    // ::ffff:a.b.c.d (mapped): the IPv4 address is what the socket reaches.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let r = match s {
        // ::a.b.c.d (deprecated IPv4-compatible).
        [0, 0, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)).or(Some(Reserved)),
        // 64:ff9b::a.b.c.d (NAT64 well-known prefix).
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        // 64:ff9b:1::/48: local-use NAT64, whatever the operator maps it to.
        [0x64, 0xff9b, 1, ..] => Reserved,
        // 6to4: 2002:a.b.c.d::/48.
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        [0x100, 0, 0, 0, ..] => Reserved,
        // Teredo (2001::/32) embeds an obfuscated IPv4 address.
        [0x2001, 0, ..] => Reserved,
        [0x2001, 0xdb8, ..] => Documentation,
        [x, ..] if x & 0xfff0 == 0x3ff0 => Documentation,
        [x, ..] if x & 0xfe00 == 0xfc00 => UniqueLocal,
        [x, ..] if x & 0xffc0 == 0xfe80 => LinkLocal,
        [x, ..] if x & 0xffc0 == 0xfec0 => UniqueLocal,
        [x, ..] if x & 0xff00 == 0xff00 => Multicast,
        _ => return None,
    };
    Some(r)
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a
/// single-address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// A string that is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an address or CIDR range")]
pub struct InvalidCidr {
    /// The string.
    pub value: String,
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidCidr { value: s.to_string() };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| err())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(err());
        }
        Ok(Cidr { net, len })
    }
}

impl Cidr {
    /// Whether `ip` is in the range. An IPv4-mapped IPv6 address is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn spec(tenant: Option<&str>, cb: Callback) -> JobSpec {
        let mut s = JobSpec::new("default", "busybox", vec![]);
        s.tenant = tenant.map(str::to_string);
        s.callback = Some(cb);
        s
    }

    fn nats(tenant: Option<&str>, subject: &str) -> Result<(), CallbackError> {
        check(
            &spec(tenant, Callback::Nats(subject.into())),
            "callbacks",
            "jetrun",
        )
    }

    #[test]
    fn nats_callbacks_in_the_tenants_namespace_pass() {
        nats(None, "callbacks.default.done").unwrap();
        nats(Some("acme"), "callbacks.acme.ci.results").unwrap();
        nats(Some("acme"), "callbacks.acme.a-b_c").unwrap();
        check(&JobSpec::new("q", "i", vec![]), "callbacks", "jetrun").unwrap();
        check_subject("hooks.x.acme.done", "acme", "hooks.x", "jetrun").unwrap();
    }

    #[test]
    fn nats_callbacks_outside_the_namespace_are_refused() {
        let cases = [
            ("$KV.jetrun-jobs.0192", "reserved"),
            ("$JS.API.STREAM.DELETE.JETRUN_DLQ", "reserved"),
            ("$SYS.REQ.SERVER.PING", "reserved"),
            ("_INBOX.abc", "reserved"),
            ("jetrun.job.cancel.0192", "reserved"),
            ("jetrun", "reserved"),
            ("callbacks.other.x", "tenant"),
            ("callbacks.>", "wildcard"),
            ("callbacks.acme.>", "wildcard"),
            ("callbacks.acme.*", "wildcard"),
            ("callbacks.acme.a*b", "wildcard"),
            ("callbacks.*.x", "wildcard"),
            ("callbacks.acme", "namespace"),
            ("callbacks.acme.", "empty token"),
            ("callbacks..acme.x", "empty token"),
            (".callbacks.acme.x", "empty token"),
            ("callbacks.acme.a b", "whitespace"),
            ("callbacks.acme.a\tb", "whitespace"),
            ("callbacks.acme.a\r\nPUB x", "whitespace"),
            ("callbacks.acme.a\u{0}", "control"),
            ("callbacksx.acme.done", "namespace"),
            ("hooks.done", "namespace"),
            ("", "empty"),
        ];
        for (subject, why) in cases {
            let e = nats(Some("acme"), subject).expect_err(subject);
            assert!(
                e.to_string().contains(why),
                "{subject:?}: {e} (expected it to say {why:?})"
            );
        }
        let long = format!("callbacks.acme.{}", "x".repeat(300));
        assert!(nats(Some("acme"), &long).is_err());
        // The tenant defaults to `default`, and a job cannot claim it through the subject.
        assert!(matches!(
            nats(None, "callbacks.acme.done"),
            Err(CallbackError::WrongTenant { .. })
        ));
        // A root under the prefix refuses everything (fails closed on misconfiguration).
        assert!(check_subject("jetrun.cb.acme.x", "acme", "jetrun.cb", "jetrun").is_err());
    }

    #[test]
    fn http_urls_are_checked_syntactically() {
        let http = |u: &str| check(&spec(None, Callback::Http(u.into())), "callbacks", "jetrun");
        http("http://hooks.example.com/done").unwrap();
        http("https://hooks.example.com:8443/a?b=c").unwrap();
        // Addresses are the sender's decision (allow-list), not this check's.
        http("http://127.0.0.1:9/").unwrap();
        for bad in [
            "/relative",
            "hooks.example.com/x",
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http://exa\nmple.com/",
            "http://example.com/\t",
            "http://:80/",
            "",
        ] {
            assert!(http(bad).is_err(), "{bad:?} passed");
        }
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(http(&long).is_err());
    }

    fn v4(s: &str) -> Option<BlockedRange> {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ipv4_classifier() {
        use BlockedRange::*;
        let cases = [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("172.15.255.255", None),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("100.128.0.1", None),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.0.170", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
        ];
        for (ip, want) in cases {
            assert_eq!(v4(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_classifier_including_embedded_ipv4() {
        use BlockedRange::*;
        let cases = [
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fec0::1", Some(UniqueLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("100::1", Some(Reserved)),
            ("2001::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            // Mapped, compatible, NAT64 and 6to4 are judged by the IPv4 address inside.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            ("64:ff9b::808:808", None),
            ("2002:c0a8:0101::1", Some(Private)),
            ("2002:0808:0808::1", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        for (ip, want) in cases {
            assert_eq!(v4(ip), want, "{ip}");
        }
    }

    #[test]
    fn cidr_ranges() {
        let c: Cidr = "127.0.0.1/32".parse().unwrap();
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("127.0.0.2".parse().unwrap()));
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains("8.8.8.8".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains("fd00:ec2::254".parse().unwrap()));
        assert!(!c.contains("fe80::1".parse().unwrap()));
        let c: Cidr = "::1".parse().unwrap();
        assert_eq!(c.to_string(), "::1/128");
        assert!(c.contains("::1".parse().unwrap()));
        for bad in ["", "localhost", "10.0.0.0/33", "::/129", "10.0.0.0/x", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }
}
