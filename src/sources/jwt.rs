//! RS256 JSON Web Tokens, as both OAuth server-to-server grants use them (Google's service
//! accounts and Salesforce's JWT bearer flow): a PKCS#8 PEM private key, and a compact JWT
//! signed with RSASSA-PKCS1-v1_5 over SHA-256.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

/// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
pub fn signing_key(pem: &str) -> Result<RsaKeyPair, String> {
    let body: String = pem.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("-----")).collect();
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return Err(
            "a PKCS#1 key (BEGIN RSA PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem`".into(),
        );
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "not a PEM private key".to_string())?;
    RsaKeyPair::from_pkcs8(&der).map_err(|e| format!("not an RSA PKCS#8 private key ({e})"))
}

/// `header.claims.signature`, each part base64url without padding.
pub fn sign(key: &RsaKeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> Result<String, String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signed.as_bytes(), &mut signature)
        .map_err(|_| "cannot sign the assertion".to_string())?;
    Ok(format!("{signed}.{}", b64(&signature)))
}
