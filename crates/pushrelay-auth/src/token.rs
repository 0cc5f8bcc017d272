use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::{Reason, Rejection, TokenFacts};

/// Largest token accepted, in bytes; a longer one is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The header fields the relay reads. `jku`, `x5u` and `jwk` are deliberately not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// `alg`.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `x5t`, if present.
    pub x5t: Option<String>,
}

/// A token split and decoded but not verified.
#[derive(Debug, Clone)]
pub struct UnverifiedToken<'a> {
    /// The header.
    pub header: TokenHeader,
    /// The claims object.
    pub claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
}

impl<'a> UnverifiedToken<'a> {
    /// Splits and decodes a compact JWS.
    pub fn parse(token: &'a str) -> Result<Self, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed(format!(
                "{} bytes, at most {MAX_TOKEN_BYTES} allowed",
                token.len()
            )));
        }
        let mut parts = token.splitn(4, '.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected three dot-separated parts".into()));
        };
        let header_json = decode_object(header, "header")?;
        // RFC 7515 §4.1.11: a `crit` extension the recipient does not understand must be
        // refused, and this relay understands none.
        if header_json.contains_key("crit") {
            return Err(malformed("the header has a crit parameter".into()));
        }
        // RFC 8725 §3.11: a token typed as something other than a JWT (an access token of
        // another profile, a logout token, ...) is not one of these, even if it verifies.
        match header_json.get("typ") {
            None => {}
            Some(Value::String(typ)) if is_jwt_type(typ) => {}
            Some(_) => return Err(malformed("the header's typ is not JWT".into())),
        }
        let alg = match header_json.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            _ => return Err(malformed("the header has no alg string".into())),
        };
        let text = |name: &str| match header_json.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let header = TokenHeader {
            kid: text("kid"),
            x5t: text("x5t"),
            alg,
        };
        let claims = decode_object(payload, "payload").map_err(|mut rejection| {
            rejection.facts.algorithm = Some(header.alg.clone());
            rejection
        })?;
        let signing_input = &token[..header.len_of_input(token, payload)];
        Ok(Self {
            header,
            claims,
            signing_input,
            signature,
        })
    }

    /// The unverified `tid` claim.
    pub fn tenant(&self) -> Option<&str> {
        match self.claims.get("tid") {
            Some(Value::String(tid)) if !tid.is_empty() => Some(tid),
            _ => None,
        }
    }

    /// A rejection carrying what could be read of this token.
    pub fn reject(&self, reason: Reason) -> Rejection {
        Rejection {
            reason,
            facts: Box::new(TokenFacts {
                claimed_tenant: self.tenant().map(str::to_owned),
                algorithm: Some(self.header.alg.clone()),
                key_id: self.header.kid.clone(),
                thumbprint: self.header.x5t.clone(),
            }),
        }
    }
}

impl TokenHeader {
    fn len_of_input(&self, token: &str, payload: &str) -> usize {
        // header "." payload: the header part's length is where the payload starts - 1.
        let header_len = token.find('.').unwrap_or(0);
        header_len + 1 + payload.len()
    }
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(format!("the {what} is not a JSON object"))),
        Err(_) => Err(malformed(format!("the {what} is not JSON"))),
    }
}

/// `JWT`, with or without the `application/` prefix, in any case (RFC 7519 §5.1).
fn is_jwt_type(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("jwt") || typ.eq_ignore_ascii_case("application/jwt")
}

fn malformed(detail: String) -> Rejection {
    Rejection::bare(Reason::Malformed(detail))
}
