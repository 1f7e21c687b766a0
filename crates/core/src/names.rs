//! Syntax rules for names we accept: DNS labels, Kubernetes label keys and values, Tailscale
//! tags, VIP service names and VIP port specs. Each returns `Err(expectation)` so callers can
//! attach it to a field path.

/// Name of the Service in front of a TailscaleEndpoints' proxies: the stable DNS name Envoy
/// clusters point at (`<name>-svc.<namespace>.svc`). The reconciler creates it under this name and
/// the Envoy Gateway extension dials it: one rule for both.
pub fn proxy_service_name(endpoints: &str) -> String {
    format!("{endpoints}-svc")
}

/// Name of the ConfigMap holding a TailscaleEndpoints' data-plane config (serve config, egress
/// targets), mounted by every proxy at `/etc/proxies`.
pub fn proxies_config_map_name(endpoints: &str) -> String {
    format!("{endpoints}-proxies")
}

/// Max length of a DNS label.
pub const DNS_LABEL_MAX: usize = 63;

/// RFC 1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, ≤ 63.
pub fn dns_label(s: &str) -> Result<(), String> {
    const WANT: &str = "want a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";
    if s.is_empty() || s.len() > DNS_LABEL_MAX {
        return Err(WANT.into());
    }
    let b = s.as_bytes();
    let ok_inner = b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if ok_inner && edge(b[0]) && edge(b[b.len() - 1]) { Ok(()) } else { Err(WANT.into()) }
}

/// RFC 1123 subdomain: dot-separated DNS labels, ≤ 253 (Kubernetes object names).
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    const WANT: &str = "want a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| dns_label(l).is_err()) {
        return Err(WANT.into());
    }
    Ok(())
}

fn label_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of ≤ 63
/// alphanumerics, `-`, `_`, `.`.
pub fn label_key(s: &str) -> Result<(), String> {
    const WANT: &str = "want a label key: an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| dns_subdomain(p).is_err()) || !label_name_part(name) {
        return Err(WANT.into());
    }
    Ok(())
}

/// Kubernetes label value: empty, or ≤ 63 alphanumerics, `-`, `_`, `.` starting and ending
/// alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || label_name_part(s) {
        Ok(())
    } else {
        Err("want a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

/// Tailscale ACL tag: `tag:` then a letter, then letters, digits and `-`.
pub fn tag(s: &str) -> Result<(), String> {
    const WANT: &str = "want \"tag:NAME\" where NAME starts with a letter and holds only letters, digits and '-'";
    let Some(name) = s.strip_prefix("tag:") else { return Err(WANT.into()) };
    let b = name.as_bytes();
    if b.is_empty()
        || b.len() > DNS_LABEL_MAX
        || !b[0].is_ascii_alphabetic()
        || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    {
        return Err(WANT.into());
    }
    Ok(())
}

/// VIP service name: `svc:` + a DNS label.
pub fn vip_service_name(s: &str) -> Result<(), String> {
    let want = "want \"svc:NAME\" where NAME is a DNS label (lowercase letters, digits and '-', at most 63 characters)";
    match s.strip_prefix("svc:") {
        Some(label) if dns_label(label).is_ok() => Ok(()),
        _ => Err(want.into()),
    }
}

/// Transport protocol of a VIP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A parsed VIP service port spec (`tcp:443`, `udp:53`, `tcp:8000-8080`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipPort {
    /// Protocol.
    pub protocol: Protocol,
    /// First port.
    pub from: u16,
    /// Last port (equal to `from` for a single port).
    pub to: u16,
}

impl VipPort {
    /// Whether two specs share a port.
    pub fn overlaps(&self, other: &VipPort) -> bool {
        self.protocol == other.protocol && self.from <= other.to && other.from <= self.to
    }
}

/// What a VIP port spec must look like.
pub const VIP_PORT_WANT: &str =
    "want \"tcp:PORT\", \"udp:PORT\" or \"tcp:FROM-TO\" with 1 <= PORT <= 65535 and FROM <= TO";

/// Parses a VIP port spec.
pub fn vip_port(s: &str) -> Result<VipPort, String> {
    let (protocol, rest) = if let Some(r) = s.strip_prefix("tcp:") {
        (Protocol::Tcp, r)
    } else if let Some(r) = s.strip_prefix("udp:") {
        (Protocol::Udp, r)
    } else {
        return Err(VIP_PORT_WANT.into());
    };
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err(VIP_PORT_WANT.into());
        }
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(VIP_PORT_WANT.into()),
        }
    };
    let (from, to) = match rest.split_once('-') {
        Some((a, b)) if protocol == Protocol::Tcp => (port(a)?, port(b)?),
        Some(_) => return Err("port ranges are only supported for tcp: want \"udp:PORT\"".into()),
        None => {
            let p = port(rest)?;
            (p, p)
        }
    };
    if from > to {
        return Err(VIP_PORT_WANT.into());
    }
    Ok(VipPort { protocol, from, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(dns_label("web-service").is_ok());
        assert!(dns_label("a").is_ok());
        assert!(dns_label(&"a".repeat(63)).is_ok());
        assert!(dns_label(&"a".repeat(64)).is_err());
        for bad in ["", "-a", "a-", "Web", "a.b", "a_b"] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
        assert!(dns_subdomain("a.b-c.d").is_ok());
        assert!(dns_subdomain("a..b").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "a_b.c-d", "example.com/X"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "-a", "Ex_ample.com/a", "a/b/c", &"a".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("prod-1").is_ok());
        assert!(label_value("has space").is_err());
        assert!(label_value("-x").is_err());
    }

    #[test]
    fn tags_and_vip_names() {
        assert!(tag("tag:k8s-proxy").is_ok());
        for bad in ["k8s", "tag:", "tag:1abc", "tag:a_b", "tag:a b"] {
            assert!(tag(bad).is_err(), "{bad}");
        }
        assert!(vip_service_name("svc:web").is_ok());
        for bad in ["web", "svc:", "svc:Web", "svc:a.b", "service:web"] {
            assert!(vip_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vip_ports() {
        assert_eq!(vip_port("tcp:443"), Ok(VipPort { protocol: Protocol::Tcp, from: 443, to: 443 }));
        assert_eq!(vip_port("udp:53").map(|p| p.protocol), Ok(Protocol::Udp));
        assert_eq!(vip_port("tcp:8000-8080").map(|p| (p.from, p.to)), Ok((8000, 8080)));
        for bad in ["http:80", "tcp:0", "tcp:65536", "tcp:", "tcp:80-70", "udp:1-2", "tcp:+1", "tcp:1-", "80"] {
            assert!(vip_port(bad).is_err(), "{bad}");
        }
        let a = vip_port("tcp:80-90").expect("parsing tcp:80-90");
        let b = vip_port("tcp:85").expect("parsing tcp:85");
        let c = vip_port("udp:85").expect("parsing udp:85");
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
