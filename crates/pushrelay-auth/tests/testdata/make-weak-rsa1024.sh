#!/bin/sh
# Regenerates weak-rsa1024.tokens and weak-rsa1024.jwk.json (see README.md).
# aws-lc-rs and rcgen refuse to sign with RSA keys under 2048 bits, so openssl does it here.
set -eu
cd "$(dirname "$0")"
key=$(mktemp)
trap 'rm -f "$key" "$key.cert"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$key" 2>/dev/null
openssl req -x509 -key "$key" -subj /CN=weak.example -days 36500 -outform DER -out "$key.cert"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
x5t=$(openssl dgst -sha1 -binary "$key.cert" | b64url)
n=$(openssl rsa -in "$key" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
now=1800000000
sign() { # header-json claims-json
  input="$(printf '%s' "$1" | b64url).$(printf '%s' "$2" | b64url)"
  printf '%s.%s\n' "$input" "$(printf '%s' "$input" | openssl dgst -sha256 -sign "$key" -binary | b64url)"
}
{
  # Naming the weak certificate's thumbprint, for a tenant with registered keys.
  sign "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"x5t\":\"$x5t\"}" \
    "{\"tid\":\"fabrikam.com\",\"iss\":\"issuer@fabrikam.com\",\"aud\":\"pushrelay\",\"nbf\":$((now - 60)),\"exp\":$((now + 3600))}"
  # Naming the weak key's kid, which the JWKS tenant's endpoint publishes.
  sign '{"alg":"RS256","typ":"JWT","kid":"weak-1024"}' \
    "{\"tid\":\"jwks.example\",\"iss\":\"issuer@jwks.example\",\"aud\":\"pushrelay\",\"nbf\":$((now - 60)),\"exp\":$((now + 3600))}"
} > weak-rsa1024.tokens
printf '{"kty":"RSA","use":"sig","kid":"weak-1024","n":"%s","e":"AQAB"}\n' "$n" > weak-rsa1024.jwk.json
