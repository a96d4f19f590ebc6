//! JWT verification for one `[auth.<name>.jwt]` policy: signature, `exp`/`nbf` with leeway,
//! audience and issuer, and the optional claim listing the topic instances granted.

use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde_json::Value;

use super::jwks::{JwksCache, KeyLookup};
use super::{glob, Denial, Grant};
use crate::config::{JwtKeys, JwtSpec};
use crate::upstream::UpstreamClient;

pub struct JwtVerifier {
    validation: Validation,
    keys: Keys,
}

enum Keys {
    Static,
    Jwks(JwksCache),
}

impl JwtVerifier {
    pub fn new(spec: &JwtSpec) -> Self {
        let mut validation = Validation::new(spec.algorithms[0]);
        validation.algorithms = spec.algorithms.clone();
        validation.leeway = spec.leeway.as_secs_f64().ceil() as u64;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &spec.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &spec.issuer {
            validation.set_issuer(&[issuer]);
        }
        let keys = match &spec.keys {
            JwtKeys::Static(..) => Keys::Static,
            JwtKeys::Jwks { url, refresh } => Keys::Jwks(JwksCache::new(url.clone(), *refresh)),
        };
        JwtVerifier { validation, keys }
    }

    /// Verifies `token` and checks that it grants `instance` (`topic/param/...`).
    pub async fn verify(
        &self,
        spec: &JwtSpec,
        token: &str,
        instance: &str,
        client: &UpstreamClient,
    ) -> Result<Grant, Denial> {
        let header =
            decode_header(token).map_err(|e| Denial::unauthenticated(format!("malformed token: {e}")))?;
        let claims = match (&self.keys, &spec.keys) {
            (_, JwtKeys::Static(key, _)) => self.decode(token, key)?,
            (Keys::Jwks(cache), _) => match cache.key(header.kid.as_deref(), client).await {
                KeyLookup::Found(key) => self.decode(token, &key)?,
                KeyLookup::UnknownKid => {
                    return Err(Denial::unauthenticated(
                        "token signed with an unknown key id".into(),
                    ))
                }
                KeyLookup::Unavailable(reason) => return Err(Denial::unavailable(reason)),
            },
            (Keys::Static, JwtKeys::Jwks { .. }) => {
                return Err(Denial::unavailable("key configuration changed; retry".into()))
            }
        };
        if let Some(claim) = &spec.topics_claim {
            if !grants(claims.get(claim), instance) {
                return Err(Denial::forbidden(format!(
                    "the token's `{claim}` claim does not grant topic {instance}"
                )));
            }
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp) + spec.leeway);
        Ok(Grant {
            expires_at: expires_at.filter(|_| spec.close_on_expiry),
        })
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<serde_json::Map<String, Value>, Denial> {
        match decode::<serde_json::Map<String, Value>>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => Err(Denial::unauthenticated(
                match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
                    ErrorKind::InvalidAudience => "the token is for another audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::MissingRequiredClaim(_) => "the token has no `exp` claim",
                    _ => "the token is not a valid JWT",
                }
                .to_string(),
            )),
        }
    }
}

/// A topics claim is a list of patterns, or one string of space-separated patterns (the
/// OAuth `scope` style).
fn grants(claim: Option<&Value>, instance: &str) -> bool {
    match claim {
        Some(Value::Array(patterns)) => patterns
            .iter()
            .filter_map(Value::as_str)
            .any(|pattern| glob::matches(pattern, instance)),
        Some(Value::String(patterns)) => patterns
            .split_ascii_whitespace()
            .any(|pattern| glob::matches(pattern, instance)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_claim_forms() {
        assert!(grants(Some(&json!(["prices/*"])), "prices/AAPL"));
        assert!(grants(Some(&json!("news prices/*")), "prices/AAPL"));
        assert!(!grants(Some(&json!(["news"])), "prices/AAPL"));
        assert!(!grants(Some(&json!(42)), "prices/AAPL"));
        assert!(!grants(None, "prices/AAPL"));
    }
}
