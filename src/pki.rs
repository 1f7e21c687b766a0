//! A small PKI for running without cert-manager: a CA, serving certificates and client
//! certificates, as PEM. Local mode keeps them in its state directory; in a cluster the
//! self-managed certificate Secret holds the same material.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Errors creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A certificate authority able to issue serving and client certificates.
pub struct Ca {
    pair: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

/// When a certificate is valid. Explicit so that rotation can be planned (and tested) for any
/// point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start (a few minutes before issuance, for clock skew).
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// `days` from `now`, starting five minutes early.
    pub fn days_from(now: OffsetDateTime, days: i64) -> Self {
        Self { not_before: now - Duration::minutes(5), not_after: now + Duration::days(days) }
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    set_validity(params, Validity::days_from(OffsetDateTime::now_utc(), days));
}

fn set_validity(params: &mut CertificateParams, v: Validity) {
    params.not_before = v.not_before;
    params.not_after = v.not_after;
}

impl Ca {
    /// A new self-signed CA, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        Self::generate_valid(common_name, Validity::days_from(OffsetDateTime::now_utc(), 3650))
    }

    /// A new self-signed CA valid for `validity`.
    pub fn generate_valid(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        let cert = params.self_signed(&key)?;
        let pair = CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Self { pair, issuer: Issuer::new(params, key) })
    }

    /// Loads an existing CA.
    pub fn from_pem(pair: CertPair) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(&pair.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)?;
        Ok(Self { pair, issuer })
    }

    /// The CA certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// A serving certificate for `names` (DNS names or IP addresses), valid for a year.
    pub fn issue_server(&self, names: &[String]) -> Result<CertPair, PkiError> {
        self.issue_server_valid(names, Validity::days_from(OffsetDateTime::now_utc(), 365))
    }

    /// A serving certificate for `names` valid for `validity`.
    pub fn issue_server_valid(&self, names: &[String], validity: Validity) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("tailscale-gateway"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for user `common_name` in `groups` (Kubernetes reads O= as groups).
    pub fn issue_client(&self, common_name: &str, groups: &[&str]) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, 365);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_reloads() {
        let ca = Ca::generate("test-ca").expect("generating the CA");
        let server =
            ca.issue_server(&["localhost".into(), "127.0.0.1".into()]).expect("issuing the server certificate");
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{server:?}").contains("PRIVATE KEY"));
        let again = Ca::from_pem(ca.pair().clone()).expect("loading the CA from its PEM");
        let client = again
            .issue_client("admin", &["system:masters"])
            .expect("issuing a client certificate from the reloaded CA");
        assert!(client.key_pem.contains("PRIVATE KEY"));
    }
}
