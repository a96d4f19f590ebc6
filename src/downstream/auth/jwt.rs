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
        let fetched;
        let key: &DecodingKey = match (&self.keys, &spec.keys) {
            (_, JwtKeys::Static(key, _)) => key,
            (Keys::Jwks(cache), _) => match cache.key(header.kid.as_deref(), client).await {
                KeyLookup::Found(key) => {
                    fetched = key;
                    &fetched
                }
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
        self.verify_with(spec, token, key, instance)
    }

    /// Everything after the key is known: signature, claims, grant. No I/O.
    fn verify_with(
        &self,
        spec: &JwtSpec,
        token: &str,
        key: &DecodingKey,
        instance: &str,
    ) -> Result<Grant, Denial> {
        let claims = self.decode(token, key)?;
        // The library skips a date it cannot parse (`nbf`) and accepts any u64 (`exp`); both
        // must be dates this process can represent, or the token is refused.
        let exp = numeric_date(&claims, "exp")?;
        numeric_date(&claims, "nbf")?;
        if let Some(claim) = &spec.topics_claim {
            if !grants(claims.get(claim), instance) {
                return Err(Denial::forbidden(format!(
                    "the token's `{claim}` claim does not grant topic {instance}"
                )));
            }
        }
        let expires_at = exp
            .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
            .and_then(|at| at.checked_add(spec.leeway));
        Ok(Grant {
            expires_at: expires_at.filter(|_| spec.close_on_expiry),
            recheck: None,
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

/// Latest accepted date in a token: the end of year 9999 (RFC 7519 NumericDate has no bound;
/// this one keeps every later computation in range).
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// A NumericDate claim (RFC 7519 §2): absent, or seconds since the epoch as a non-negative
/// number up to [`MAX_NUMERIC_DATE`] (fractions are rounded, as the library does).
fn numeric_date(claims: &serde_json::Map<String, Value>, name: &str) -> Result<Option<u64>, Denial> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = match value {
        Value::Number(number) => match number.as_u64() {
            Some(seconds) => Some(seconds),
            None => number
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f <= MAX_NUMERIC_DATE as f64)
                .map(|f| f.round() as u64),
        },
        _ => None,
    };
    match seconds {
        Some(seconds) if seconds <= MAX_NUMERIC_DATE => Ok(Some(seconds)),
        _ => Err(Denial::unauthenticated(format!(
            "the token's `{name}` claim is not a valid date"
        ))),
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
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"unit-test-secret-0123456789abcdef";

    fn spec() -> JwtSpec {
        JwtSpec {
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::from_key(DecodingKey::from_secret(SECRET), SECRET),
            cookie: None,
            query_param: None,
            topics_claim: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(5),
            close_on_expiry: true,
        }
    }

    fn check(verifier: &JwtVerifier, spec: &JwtSpec, claims: &Value) -> Result<Grant, Denial> {
        let token = encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encodes");
        let JwtKeys::Static(key, _) = &spec.keys else {
            unreachable!("a static key");
        };
        verifier.verify_with(spec, &token, key, "prices/AAPL")
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64
    }

    /// Dates of every shape and size (integers either side of i64/u64 limits, negative,
    /// fractional, huge floats, non-numbers) in `exp` and `nbf`: each token is either
    /// admitted with a representable expiry or refused with a 401, and nothing panics.
    #[test]
    fn any_exp_or_nbf_is_admitted_or_refused_with_401_never_a_panic() {
        let spec = spec();
        let verifier = JwtVerifier::new(&spec);
        let later = now() + 600;
        let mut values = vec![
            json!(1e20),
            json!(-1e20),
            json!(u64::MAX),
            json!(i64::MAX),
            json!(i64::MAX as u64 + 1),
            json!(i64::MIN),
            json!(-1),
            json!(-0.5),
            json!(f64::MAX),
            json!(1.5e19),
            json!(MAX_NUMERIC_DATE),
            json!(MAX_NUMERIC_DATE + 1),
            json!(later as f64 + 0.25),
            json!(later),
            json!("tomorrow"),
            json!(null),
            json!([later]),
            json!({"at": later}),
            json!(true),
        ];
        for _ in 0..300 {
            let magnitude = 10f64.powi(rand::random_range(0..25));
            let float = rand::random_range(-1.0..1.0) * magnitude;
            values.push(json!(float));
            values.push(json!(float as i64));
            values.push(json!(rand::random::<u64>() >> rand::random_range(0..64)));
        }
        for value in &values {
            for claims in [json!({ "exp": value }), json!({ "exp": later, "nbf": value })] {
                match check(&verifier, &spec, &claims) {
                    Ok(grant) => {
                        let at = grant.expires_at.expect("close_on_expiry gives an expiry");
                        assert!(at > SystemTime::now(), "{claims}: admitted but already expired");
                    }
                    Err(denial) => assert_eq!(denial.status, 401, "{claims}: {denial:?}"),
                }
            }
        }
        // The ones that must be refused: beyond any representable date, negative, not a number.
        for value in [
            json!(1e20),
            json!(u64::MAX),
            json!(i64::MAX),
            json!(-1),
            json!("x"),
        ] {
            let refused = check(&verifier, &spec, &json!({ "exp": value }));
            assert_eq!(
                refused.map(|_| ()).map_err(|d| d.status),
                Err(401),
                "exp = {value}"
            );
            let refused = check(&verifier, &spec, &json!({ "exp": later, "nbf": value }));
            assert_eq!(
                refused.map(|_| ()).map_err(|d| d.status),
                Err(401),
                "nbf = {value}"
            );
        }
        // A fractional exp is a date like any other: the stream still ends then.
        let fractional = check(&verifier, &spec, &json!({ "exp": later as f64 + 0.25 })).expect("valid");
        assert!(fractional.expires_at.is_some());
    }

    #[test]
    fn topics_claim_forms() {
        assert!(grants(Some(&json!(["prices/*"])), "prices/AAPL"));
        assert!(grants(Some(&json!("news prices/*")), "prices/AAPL"));
        assert!(!grants(Some(&json!(["news"])), "prices/AAPL"));
        assert!(!grants(Some(&json!(42)), "prices/AAPL"));
        assert!(!grants(None, "prices/AAPL"));
    }
}
