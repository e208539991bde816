//! UserSig v2: Tencent's admin credential, signed and verified (TENCENT.md §4).
//!
//! `sign` and `verify` take the clock as an argument so they are exact and testable.
//! The token is zlib(JSON) in a URL-safe base64 alphabet; the HMAC is over fixed
//! `TLS.<field>:<value>\n` lines. Verification parses and recomputes: key order, spacing
//! and compression level differ between Tencent's own libraries, so bytes are never compared.
//! `Signer` keeps one short-lived token per app and mints a new one once half its lifetime
//! has passed, so no long-lived credential ever exists.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// A Tencent SecretKey. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Arc<str>);

impl SecretKey {
    /// Wraps a key; its raw UTF-8 bytes are the HMAC key.
    pub fn new(key: &str) -> Self {
        Self(Arc::from(key))
    }

    /// The key itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The largest inflated token `verify` accepts; real ones are a few hundred bytes.
const MAX_INFLATED: u64 = 64 * 1024;

/// A signed UserSig. Its `Debug` hides the token, so it can sit in logged structs. Shared,
/// not copied: every request signed with the cached token takes it, twice an attempt.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSig(std::sync::Arc<str>);

impl UserSig {
    /// The token as it goes into the `usersig` query parameter.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UserSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserSig(***)")
    }
}

/// What a UserSig asserts: who, for which app, from when, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The SDKAppID the token was signed for.
    pub sdkappid: u64,
    /// The account the token speaks for.
    pub identifier: String,
    /// UNIX seconds at signing.
    pub time: u64,
    /// Lifetime in seconds, counted from `time`.
    pub expire: u64,
    /// Optional opaque user buffer (raw bytes, base64 inside the token).
    pub userbuf: Option<Vec<u8>>,
}

/// Why a token was refused. Each reason maps to its own Tencent error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not base64, not zlib, not JSON, or a field missing or mistyped.
    #[error("UserSig is malformed: {0}")]
    Malformed(&'static str),
    /// The token was signed for another SDKAppID.
    #[error("UserSig was signed for another SDKAppID")]
    SdkAppIdMismatch,
    /// The token was signed for another identifier.
    #[error("UserSig was signed for another identifier")]
    IdentifierMismatch,
    /// `now > time + expire`.
    #[error("UserSig expired")]
    Expired,
    /// The HMAC does not match: wrong key or altered content.
    #[error("UserSig signature does not match")]
    BadSignature,
}

/// Signs `claims` with `key` (its raw UTF-8 bytes) and encodes the token.
pub fn sign(key: &SecretKey, claims: &Claims) -> UserSig {
    let sig = STANDARD.encode(hmac(key, claims));
    let mut doc = json!({
        "TLS.ver": "2.0",
        "TLS.identifier": claims.identifier,
        "TLS.sdkappid": claims.sdkappid,
        "TLS.expire": claims.expire,
        "TLS.time": claims.time,
        "TLS.sig": sig,
    });
    if let Some(buf) = &claims.userbuf {
        doc["TLS.userbuf"] = Value::String(STANDARD.encode(buf));
    }
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::best());
    zlib.write_all(doc.to_string().as_bytes())
        .and_then(|()| zlib.flush())
        .expect("writing to a Vec cannot fail");
    let packed = zlib.finish().expect("writing to a Vec cannot fail");
    UserSig(to_url_alphabet(&STANDARD.encode(packed)).into())
}

/// Checks `token` for `sdkappid`/`identifier` at `now` (UNIX seconds), as Tencent does.
pub fn verify(
    key: &SecretKey,
    token: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<Claims, VerifyError> {
    let (claims, sig) = decode(token)?;
    if claims.sdkappid != sdkappid {
        return Err(VerifyError::SdkAppIdMismatch);
    }
    if claims.identifier != identifier {
        return Err(VerifyError::IdentifierMismatch);
    }
    if now > claims.time.saturating_add(claims.expire) {
        return Err(VerifyError::Expired);
    }
    let mut mac = keyed(key);
    mac.update(content(&claims).as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(claims)
}

/// Decodes a token into its claims and raw signature, without checking anything.
pub fn decode(token: &str) -> Result<(Claims, Vec<u8>), VerifyError> {
    let packed = STANDARD
        .decode(from_url_alphabet(token))
        .map_err(|_| VerifyError::Malformed("not base64"))?;
    let mut json = Vec::new();
    ZlibDecoder::new(packed.as_slice())
        .take(MAX_INFLATED)
        .read_to_end(&mut json)
        .map_err(|_| VerifyError::Malformed("not zlib"))?;
    let doc: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| VerifyError::Malformed("not a JSON object"))?;
    let userbuf = match doc.get("TLS.userbuf") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or(VerifyError::Malformed("TLS.userbuf"))?,
        ),
    };
    let claims = Claims {
        sdkappid: int_field(&doc, "TLS.sdkappid")?,
        identifier: str_field(&doc, "TLS.identifier")?.to_owned(),
        time: int_field(&doc, "TLS.time")?,
        expire: int_field(&doc, "TLS.expire")?,
        userbuf,
    };
    let sig = STANDARD
        .decode(str_field(&doc, "TLS.sig")?)
        .map_err(|_| VerifyError::Malformed("TLS.sig"))?;
    Ok((claims, sig))
}

/// The `TLS.sig` field for `claims`: standard base64 of the HMAC.
pub fn signature(key: &SecretKey, claims: &Claims) -> String {
    STANDARD.encode(hmac(key, claims))
}

fn hmac(key: &SecretKey, claims: &Claims) -> Vec<u8> {
    let mut mac = keyed(key);
    mac.update(content(claims).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn keyed(key: &SecretKey) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes a key of any size")
}

/// The signed content: fixed lines in a fixed order, each ending in one LF.
fn content(c: &Claims) -> String {
    let mut s = format!(
        "TLS.identifier:{}\nTLS.sdkappid:{}\nTLS.time:{}\nTLS.expire:{}\n",
        c.identifier, c.sdkappid, c.time, c.expire
    );
    if let Some(buf) = &c.userbuf {
        s.push_str(&format!("TLS.userbuf:{}\n", STANDARD.encode(buf)));
    }
    s
}

fn int_field(doc: &Map<String, Value>, name: &'static str) -> Result<u64, VerifyError> {
    // Some of Tencent's libraries write numbers as strings; accept both.
    match doc.get(name) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or(VerifyError::Malformed(name))
}

fn str_field<'a>(doc: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, VerifyError> {
    doc.get(name)
        .and_then(Value::as_str)
        .ok_or(VerifyError::Malformed(name))
}

fn to_url_alphabet(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

fn from_url_alphabet(token: &str) -> String {
    token
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect()
}

/// UNIX seconds now, from the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One app's admin UserSig, re-signed once half of its lifetime has passed.
pub struct Signer {
    key: SecretKey,
    sdkappid: u64,
    identifier: String,
    ttl: Duration,
    current: Mutex<Option<(u64, UserSig)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("sdkappid", &self.sdkappid)
            .field("identifier", &self.identifier)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for one app's admin account; mints nothing until first asked.
    pub fn new(key: SecretKey, sdkappid: u64, identifier: String, ttl: Duration) -> Self {
        Self {
            key,
            sdkappid,
            identifier,
            ttl,
            current: Mutex::new(None),
        }
    }

    /// A token valid at `now` for at least half the configured lifetime.
    /// Returns whether it was freshly minted, for the re-sign metric.
    pub fn usersig(&self, now: u64) -> (UserSig, bool) {
        let half = self.ttl.as_secs() / 2;
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((minted, sig)) = current.as_ref() {
            // A clock that went backwards also forces a new token.
            if now >= *minted && now - minted < half.max(1) {
                return (sig.clone(), false);
            }
        }
        let sig = sign(
            &self.key,
            &Claims {
                sdkappid: self.sdkappid,
                identifier: self.identifier.clone(),
                time: now,
                expire: self.ttl.as_secs(),
                userbuf: None,
            },
        );
        *current = Some((now, sig.clone()));
        (sig, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vector {
        sdkappid: u64,
        key: SecretKey,
        identifier: String,
        time: u64,
        expire: u64,
        usersig: String,
        tls_sig: String,
        userbuf: Option<Vec<u8>>,
    }

    /// Known answers produced by Tencent's official `tls-sig-api-v2` Python package (1.1)
    /// with its clock pinned; copied unchanged into the repository (its `about` field says
    /// how they were made), so the tests need nothing outside it.
    const VECTORS: &str = include_str!("../tests/vectors/usersig_v2.json");

    fn vectors() -> Vec<Vector> {
        let doc: Value = serde_json::from_str(VECTORS).expect("vectors file is JSON");
        let vectors = doc["vectors"].as_array().expect("vectors array");
        assert!(vectors.len() >= 5, "expected the published vectors");
        vectors
            .iter()
            .map(|v| Vector {
                sdkappid: v["sdkappid"].as_u64().unwrap(),
                key: SecretKey::new(v["key"].as_str().unwrap()),
                identifier: v["identifier"].as_str().unwrap().to_owned(),
                time: v["time"].as_u64().unwrap(),
                expire: v["expire"].as_u64().unwrap(),
                usersig: v["usersig"].as_str().unwrap().to_owned(),
                tls_sig: v["tls_sig"].as_str().unwrap().to_owned(),
                userbuf: v
                    .get("userbuf_base64")
                    .map(|b| STANDARD.decode(b.as_str().unwrap()).unwrap()),
            })
            .collect()
    }

    fn claims(v: &Vector) -> Claims {
        Claims {
            sdkappid: v.sdkappid,
            identifier: v.identifier.clone(),
            time: v.time,
            expire: v.expire,
            userbuf: v.userbuf.clone(),
        }
    }

    #[test]
    fn signature_matches_tencent_for_every_vector() {
        for v in vectors() {
            assert_eq!(
                signature(&v.key, &claims(&v)),
                v.tls_sig,
                "{}",
                v.identifier
            );
        }
    }

    #[test]
    fn verify_accepts_tencent_tokens_including_userbuf() {
        for v in vectors() {
            let got = verify(&v.key, &v.usersig, v.sdkappid, &v.identifier, v.time + 1)
                .unwrap_or_else(|e| panic!("{}: {e}", v.identifier));
            assert_eq!(got, claims(&v));
        }
    }

    #[test]
    fn our_tokens_decode_to_tencents_claims_and_signature() {
        for v in vectors() {
            let ours = sign(&v.key, &claims(&v));
            let (ours_claims, ours_sig) = decode(ours.as_str()).unwrap();
            let (theirs_claims, theirs_sig) = decode(&v.usersig).unwrap();
            assert_eq!(ours_claims, theirs_claims);
            assert_eq!(ours_sig, theirs_sig);
        }
    }

    #[test]
    fn verify_rejects_each_fault_with_its_own_reason() {
        let v = &vectors()[1];
        let ok = |token: &str, key: &SecretKey, app: u64, id: &str, now: u64| {
            verify(key, token, app, id, now).map(|_| ())
        };
        let now = v.time + 10;
        let mut flipped = v.usersig.clone().into_bytes();
        flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let other_key = SecretKey::new("another-key");
        let other_sig = sign(&other_key, &claims(v));

        assert!(verify(&v.key, &flipped, v.sdkappid, &v.identifier, now).is_err());
        assert_eq!(
            ok(other_sig.as_str(), &v.key, v.sdkappid, &v.identifier, now),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            ok(&v.usersig, &other_key, v.sdkappid, &v.identifier, now),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            ok(&v.usersig, &v.key, v.sdkappid, "someone-else", now),
            Err(VerifyError::IdentifierMismatch)
        );
        assert_eq!(
            ok(&v.usersig, &v.key, v.sdkappid + 1, &v.identifier, now),
            Err(VerifyError::SdkAppIdMismatch)
        );
        let end = v.time + v.expire;
        assert_eq!(
            ok(&v.usersig, &v.key, v.sdkappid, &v.identifier, end),
            Ok(())
        );
        assert_eq!(
            ok(&v.usersig, &v.key, v.sdkappid, &v.identifier, end + 1),
            Err(VerifyError::Expired)
        );
        assert!(matches!(
            ok("not*a*token", &v.key, v.sdkappid, &v.identifier, now),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn a_flipped_character_anywhere_is_refused() {
        let v = &vectors()[0];
        let now = v.time + 1;
        for i in 0..v.usersig.len() {
            let mut bytes = v.usersig.clone().into_bytes();
            bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
            let token = String::from_utf8(bytes).unwrap();
            assert!(
                verify(&v.key, &token, v.sdkappid, &v.identifier, now).is_err(),
                "flip at {i} accepted"
            );
        }
    }

    #[test]
    fn signer_reuses_a_token_until_half_its_life_then_resigns() {
        let key = SecretKey::new("k");
        let signer = Signer::new(
            key.clone(),
            1400000001,
            "admin".into(),
            Duration::from_secs(600),
        );
        let (first, minted) = signer.usersig(1_000);
        assert!(minted);
        assert_eq!(signer.usersig(1_299), (first.clone(), false));
        let (second, minted) = signer.usersig(1_300);
        assert!(minted);
        assert_ne!(first, second);
        assert!(verify(&key, second.as_str(), 1400000001, "admin", 1_300 + 600).is_ok());
        // A clock stepping backwards never serves a token from the future.
        let (third, minted) = signer.usersig(900);
        assert!(minted);
        assert_eq!(decode(third.as_str()).unwrap().0.time, 900);
    }

    #[test]
    fn usersig_debug_hides_the_token() {
        let sig = sign(
            &SecretKey::new("k"),
            &Claims {
                sdkappid: 1,
                identifier: "a".into(),
                time: 1,
                expire: 1,
                userbuf: None,
            },
        );
        assert_eq!(format!("{sig:?}"), "UserSig(***)");
    }
}
