//! Admission tokens: EdDSA (Ed25519) JWTs with `kid`, a rotating key set and its JWKS.
//!
//! Claims follow DESIGN §3: `iss`, `aud` (room), `sub` (user or anonymous session), `jti`
//! (ticket), `iat`, `nbf`, `exp` (admission end) and `cnf`, the base64url SHA-256 of the
//! ticket's cookie secret, which binds the token to the browser that queued.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::verify::{self, VerifiedCache};

/// Largest token accepted anywhere, in bytes; longer input is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Token and key errors. The `Display` text is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A configured key could not be read.
    #[error("invalid signing key: {0}")]
    InvalidKey(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The token is malformed, forged, for another room, or out of its time window.
    #[error("token refused: {0}")]
    Refused(&'static str),
    /// The JWKS document could not be fetched or read.
    #[error("jwks unavailable: {0}")]
    Jwks(String),
}

/// The claims of an admission token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    /// The issuing gateway.
    pub iss: String,
    /// The room id.
    pub aud: String,
    /// The user id or anonymous session id.
    pub sub: String,
    /// The ticket id.
    pub jti: String,
    /// Issued at (Unix s).
    pub iat: u64,
    /// Not before (Unix s).
    pub nbf: u64,
    /// Admission end (Unix s).
    pub exp: u64,
    /// base64url SHA-256 of the ticket's cookie secret.
    pub cnf: String,
}

/// base64url (no padding) SHA-256 of a cookie secret: the `cnf` claim.
pub fn cnf_of(secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, secret))
}

/// One Ed25519 key pair with its key id.
pub struct SigningKey {
    kid: String,
    public: Vec<u8>,
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private material.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, TokenError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| TokenError::InvalidKey(e.to_string()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Reads a key from config: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) or a base64
    /// 32-byte seed.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = STANDARD
                .decode(body.trim())
                .map_err(|_| TokenError::InvalidKey("PEM body is not base64".into()))?;
            return Self::from_pkcs8(&der);
        }
        let seed = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| TokenError::InvalidKey("neither PKCS#8 PEM nor base64".into()))?;
        Self::from_seed(&seed)
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self, TokenError> {
        if seed.len() != 32 {
            return Err(TokenError::InvalidKey(format!("seed must be 32 bytes, got {}", seed.len())));
        }
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|e| TokenError::InvalidKey(e.to_string()))?;
        Self::from_pair(&pair)
    }

    /// A key from PKCS#8 DER (v1 as written by `openssl genpkey`, or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| TokenError::InvalidKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Self::from_pair(&pair)
    }

    fn from_pair(pair: &Ed25519KeyPair) -> Result<Self, TokenError> {
        let v2 = pair.to_pkcs8().map_err(|e| TokenError::InvalidKey(e.to_string()))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(SigningKey {
            kid: thumbprint(&public),
            public,
            pkcs8: v2.as_ref().to_vec(),
            encoding: EncodingKey::from_ed_der(v2.as_ref()),
        })
    }

    /// A 32-byte secret derived from this key for `label` (HMAC-SHA256 keyed by the private
    /// key): gateways sharing a signing key share every derived secret, with no extra config.
    pub fn derive_secret(&self, label: &str) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.pkcs8);
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::hmac::sign(&key, label.as_bytes()).as_ref());
        out
    }

    /// The key id: the RFC 7638 JWK thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.kid.clone(), &self.public)
    }
}

/// A verification key.
#[derive(Clone)]
pub struct PublicKey {
    kid: String,
    x: String,
    decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).field("x", &self.x).finish()
    }
}

impl PublicKey {
    fn new(kid: String, raw: &[u8]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(raw);
        PublicKey { kid, decoding: DecodingKey::from_ed_der(raw), x }
    }

    /// Reads an OKP/Ed25519 JWK; other key types are refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, TokenError> {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(TokenError::Jwks(format!("key {} is not OKP/Ed25519", jwk.kid)));
        }
        if jwk.alg.as_deref().is_some_and(|a| a != "EdDSA") {
            return Err(TokenError::Jwks(format!("key {} is not for EdDSA", jwk.kid)));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(&jwk.x)
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| TokenError::Jwks(format!("key {} has a bad x", jwk.kid)))?;
        Ok(Self::new(jwk.kid.clone(), &raw))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK form.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: self.x.clone(),
            kid: self.kid.clone(),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
        }
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// One key of a JWKS document (only what Ed25519 needs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`.
    pub kty: String,
    /// Curve: `Ed25519`.
    #[serde(default)]
    pub crv: String,
    /// The public key, base64url.
    #[serde(default)]
    pub x: String,
    /// Key id.
    #[serde(default)]
    pub kid: String,
    /// `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A JWKS document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

fn thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// The gateway's keys: the newest signs, all verify (rotation without breaking live tokens).
#[derive(Debug)]
pub struct KeySet {
    issuer: String,
    signing: SigningKey,
    verify: HashMap<String, PublicKey>,
    cache: Arc<VerifiedCache>,
    leeway_s: u64,
}

impl KeySet {
    /// A key set that signs with `signing`.
    pub fn new(issuer: impl Into<String>, signing: SigningKey) -> Self {
        let mut verify = HashMap::new();
        verify.insert(signing.kid.clone(), signing.public_key());
        KeySet {
            issuer: issuer.into(),
            signing,
            verify,
            cache: Arc::new(VerifiedCache::new(verify::DEFAULT_CACHE_ENTRIES)),
            leeway_s: verify::DEFAULT_LEEWAY_S,
        }
    }

    /// Makes `next` the signing key; the previous one keeps verifying until removed.
    pub fn rotate(&mut self, next: SigningKey) {
        self.verify.insert(next.kid.clone(), next.public_key());
        self.signing = next;
    }

    /// Adds a key that only verifies (e.g. a retired key whose tokens are still live).
    pub fn add_verify_key(&mut self, key: PublicKey) {
        self.verify.insert(key.kid.clone(), key);
    }

    /// Stops accepting a retired key.
    pub fn remove_key(&mut self, kid: &str) {
        if kid != self.signing.kid {
            self.verify.remove(kid);
            self.cache.clear();
        }
    }

    /// The issuer written into `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signing key's id.
    pub fn signing_kid(&self) -> &str {
        &self.signing.kid
    }

    /// The current signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Signs an admission for `room`, ticket `jti`, holder `sub`, valid `[now, exp)`.
    pub fn sign(
        &self,
        room: &str,
        sub: &str,
        jti: &str,
        cnf: &str,
        now_s: u64,
        exp_s: u64,
    ) -> Result<String, TokenError> {
        let claims = AdmissionClaims {
            iss: self.issuer.clone(),
            aud: room.to_owned(),
            sub: sub.to_owned(),
            jti: jti.to_owned(),
            iat: now_s,
            nbf: now_s,
            exp: exp_s,
            cnf: cnf.to_owned(),
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary admission claims (tests use it for odd time windows).
    pub fn sign_claims(&self, claims: &AdmissionClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Jwks {
        let mut keys: Vec<Jwk> = self.verify.values().map(PublicKey::to_jwk).collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        Jwks { keys }
    }

    /// Checks the time window and audience of claims this key set verified before (a cache
    /// of verified tokens still has to ask this on every use).
    pub fn check_live(&self, claims: &AdmissionClaims, room: &str) -> Result<(), TokenError> {
        verify::check_window(claims, room, self.leeway_s)
    }

    /// Verifies a token for `room` with the local keys (cached after the first success).
    pub fn verify(&self, token: &str, room: &str) -> Result<Arc<AdmissionClaims>, TokenError> {
        verify::verify_token(token, room, Some(&self.issuer), self.leeway_s, &self.cache, |kid| {
            self.verify.get(kid).cloned()
        })
    }
}
