//! Certificates and keys for a local control plane: a CA, the API server's serving certificate, an
//! admin client certificate (group `system:masters`) and the service-account signing key.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the generated files.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// Generates the PKI into `dir`.
pub fn generate(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir)?;
    let write = |file: &str, contents: String| -> Result<PathBuf> {
        let path = dir.join(file);
        fs::write(&path, contents)?;
        Ok(path)
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("sluice-testbed-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut server_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))));
    // The real node's address, where its pods reach the API server (crate::node::NODE_IP).
    server_params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))));
    server_params.distinguished_name = name("kube-apiserver", None);
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
    admin_params.distinguished_name = name("sluice-admin", Some("system:masters"));
    admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin_params.signed_by(&admin_key, &ca)?;

    let service_account_key = KeyPair::generate()?;

    Ok(Pki {
        ca_cert: write("ca.crt", ca.pem())?,
        ca_key: write("ca.key", ca_key_pem)?,
        server_cert: write("apiserver.crt", server_cert.pem())?,
        server_key: write("apiserver.key", server_key.serialize_pem())?,
        admin_cert: write("admin.crt", admin_cert.pem())?,
        admin_key: write("admin.key", admin_key.serialize_pem())?,
        service_account_key: write("service-account.key", service_account_key.serialize_pem())?,
        service_account_pub: write("service-account.pub", service_account_key.public_key_pem())?,
    })
}
