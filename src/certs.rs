//! `twinblock gen-certs`: a CA plus a certificate/key pair per node name.
//! An existing CA in DIR (ca.pem + ca.key) is reused, so a replacement node
//! can get a certificate the other node already trusts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "twinblock CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// `json`: one object on stdout (`ca`, `ca_key`, `reused_ca`, `nodes`:
/// name -> {cert, key}) instead of lines for people.
pub fn run(out: &Path, names: &[String], json: bool) -> Result<()> {
    if names.is_empty() {
        bail!("give at least one node name");
    }
    for n in names {
        if n.is_empty() || n == "ca" || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("{n:?} is not a usable node name (a-z, 0-9, -; not \"ca\")");
        }
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (ca_pem, ca_key_path) = (out.join("ca.pem"), out.join("ca.key"));
    let reused_ca = ca_key_path.exists() && ca_pem.exists();
    let ca_key = if reused_ca {
        let pem = fs::read_to_string(&ca_key_path)?;
        let key = KeyPair::from_pem(&pem).with_context(|| format!("{}", ca_key_path.display()))?;
        if !json {
            println!("reusing the CA in {}", ca_pem.display());
        }
        key
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_file(&ca_pem, &cert.pem(), false)?;
        write_file(&ca_key_path, &key.serialize_pem(), true)?;
        if !json {
            println!("wrote {} and {}", ca_pem.display(), ca_key_path.display());
        }
        key
    };
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut nodes = serde_json::Map::new();
    for name in names {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.clone()])?;
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer)?;
        write_file(&out.join(format!("{name}.pem")), &cert.pem(), false)?;
        write_file(&out.join(format!("{name}.key")), &key.serialize_pem(), true)?;
        if !json {
            println!("wrote {0}/{name}.pem and {0}/{name}.key", out.display());
        }
        nodes.insert(
            name.clone(),
            serde_json::json!({
                "cert": out.join(format!("{name}.pem")),
                "key": out.join(format!("{name}.key")),
            }),
        );
    }
    if json {
        let v = serde_json::json!({
            "ca": ca_pem,
            "ca_key": ca_key_path,
            "reused_ca": reused_ca,
            "nodes": nodes,
        });
        println!("{v}");
    }
    Ok(())
}
