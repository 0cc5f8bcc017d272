#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets: fuzz/corpus/<target>/<name>.

A few valid inputs per target (encoded records, bodies, tokens, key material), framed as
each target reads them (see fuzz/src/lib.rs and the targets' headers). Certificates come
from `openssl`, made afresh, so rerunning changes those files; the rest is deterministic.

    python3 fuzz/seed_corpus.py
"""

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NOW = 1_800_000_000  # pushrelay_fuzz::NOW_MS / 1000
TENANT = "fabrikam.com"
ISSUER = "00000002-0000-0ff1-ce00-000000000000@fabrikam.com"


# --- protobuf wire format -------------------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def u(num, value):
    """A varint field (uint32/64, int32/64, bool, enum); defaults are omitted."""
    return b"" if value == 0 else varint(num << 3) + varint(value)


def b(num, value):
    """A length-delimited field (string, bytes, embedded message)."""
    if isinstance(value, str):
        value = value.encode()
    return b"" if not value else varint(num << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(fields)


def notification(mailbox, count, sequence, source_time=0):
    # `sequence` is proto3 `optional`: present even when 0.
    return message(b(1, mailbox), u(2, count), varint(3 << 3) + varint(sequence), u(4, source_time))


def mailbox_change(mailbox, count, sequence, token):
    return message(b(1, "0f1e2d3c4b5a69788796a5b4c3d2e1f0"), b(2, mailbox), u(3, count),
                   u(4, sequence), u(5, NOW * 1000 - 50), u(6, NOW * 1000), b(7, token))


def unread_count(mailbox, count, sequence):
    return message(b(1, TENANT), b(2, mailbox), u(3, count), u(4, sequence), u(5, 3),
                   u(6, NOW * 1000 - 40), u(7, NOW * 1000 - 10), u(8, NOW * 1000),
                   b(9, "0f1e2d3c4b5a69788796a5b4c3d2e1f0"))


def subscription_change(action, platform, device, app, token, environment=1):
    return message(b(1, "00112233445566778899aabbccddeeff"), u(2, action), b(3, "alice@fabrikam.com"),
                   u(4, platform), b(5, device), b(6, app), u(7, environment),
                   u(8, 0), u(9, NOW * 1000), b(10, token))


def subscription(platform, device, app, created, expires):
    return message(b(1, TENANT), b(2, "alice@fabrikam.com"), u(3, platform), b(4, device),
                   b(5, app), u(6, 1), u(7, created), u(8, expires))


def push_request(platform, device, payload, expires):
    return message(b(1, "5f4dcc3b5aa765d61d8327deb882cf99"), b(2, TENANT), b(3, "alice@fabrikam.com"),
                   u(4, platform), b(5, device), b(6, "com.example.mail"), u(7, 1), u(8, 5),
                   b(9, "8c6976e5b5410415bde908bd4dee15df"), u(10, expires), u(11, 5),
                   b(12, payload), b(13, "alert"), u(14, NOW * 1000 - 30), u(15, 42))


def key_credential(thumbprint="", key_id="", cert=b"", spki=b"", not_before=0, not_after=0):
    return message(b(1, thumbprint), b(2, key_id), b(3, cert), b(4, spki), u(5, not_before),
                   u(6, not_after))


def tenant(keys):
    return message(b(1, TENANT), u(2, 1), b(3, ISSUER), b(4, "pushrelay"),
                   *[b(5, key) for key in keys], u(7, NOW * 1000))


# --- framing (pushrelay_fuzz::Input) --------------------------------------------------

def field(data):
    if isinstance(data, str):
        data = data.encode()
    return struct.pack("<H", len(data)) + data


# --- key material ---------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def key_material():
    with tempfile.TemporaryDirectory() as tmp:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key",
                "-subj", "/CN=fabrikam.com", "-days", "3650", "-outform", "DER", "-out", "rsa.der",
                cwd=tmp)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ec.key", "-subj", "/CN=fabrikam.com", "-days", "3650",
                "-outform", "DER", "-out", "ec.der", cwd=tmp)
        openssl("pkey", "-in", "rsa.key", "-pubout", "-outform", "DER", "-out", "rsa.spki", cwd=tmp)
        openssl("pkey", "-in", "ec.key", "-pubout", "-outform", "DER", "-out", "ec.spki", cwd=tmp)
        openssl("x509", "-inform", "DER", "-in", "ec.der", "-out", "ec.pem", cwd=tmp)
        read = lambda name: open(os.path.join(tmp, name), "rb").read()
        return {name: read(name) for name in ["rsa.der", "ec.der", "rsa.spki", "ec.spki", "ec.pem"]}


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def x5t(cert_der):
    import hashlib
    return b64url(hashlib.sha1(cert_der).digest())


def jwt(header, claims, signature=b"\x01" * 64):
    return ".".join([b64url(json.dumps(header, separators=(",", ":"))),
                     b64url(json.dumps(claims, separators=(",", ":"))), b64url(signature)])


CLAIMS = {"aud": "pushrelay", "iss": ISSUER, "tid": TENANT, "nbf": NOW - 300, "exp": NOW + 600}


# --- the seeds ------------------------------------------------------------------------

def seeds(keys):
    token = jwt({"alg": "RS256", "kid": "fuzz-rsa", "typ": "JWT"}, CLAIMS)
    apns_device = "ab" * 32
    apns_payload = b'{"aps":{"badge":5}}'
    fcm_payload = json.dumps({"message": {"token": "fcm-token:APA91b", "data": {"unreadCount": "5"}}}).encode()
    rsa_spki, ec_spki = keys["rsa.spki"], keys["ec.spki"]
    ec_point = ec_spki[-65:]  # 04 || x || y
    rsa_modulus = subprocess.run(["openssl", "rsa", "-pubin", "-inform", "DER", "-noout", "-modulus"],
                                 input=rsa_spki, check=True, capture_output=True).stdout
    rsa_n = bytes.fromhex(rsa_modulus.decode().strip().split("=", 1)[1])
    cred_rsa = key_credential(x5t(keys["rsa.der"]), "fuzz-rsa", cert=keys["rsa.der"])
    cred_ec = key_credential(key_id="fuzz-ec", spki=ec_spki, not_before=(NOW - 86400) * 1000,
                             not_after=(NOW + 86400) * 1000)
    change = mailbox_change("alice@fabrikam.com", 5, 42, token)
    subscribe = subscription_change(1, 1, apns_device, "com.example.mail", token)
    unsubscribe = subscription_change(2, 2, "fcm-token:APA91b", "", token)

    yield "records", "notification", b"\x00" + notification("alice@fabrikam.com", 5, 42)
    yield "records", "notification-batch", b"\x01" + message(
        b(1, notification("alice@fabrikam.com", 5, 42)), b(1, notification("bob@fabrikam.com", 0, 0)))
    yield "records", "mailbox-change", b"\x02" + change
    yield "records", "unread-count", b"\x03" + unread_count("alice@fabrikam.com", 5, 42)
    yield "records", "dead-letter", b"\x04" + message(
        b(1, "fanout"), b(2, "pushrelay.unread-counts"), u(3, 2), u(4, 17), b(5, "undecodable"),
        b(6, "not an UnreadCount"), b(7, "fabrikam.com/alice@fabrikam.com"), b(8, b"\xff\xff"),
        u(9, 2), b(10, b"\x00" * 32), u(11, NOW * 1000))
    yield "records", "tenant-feedback", b"\x05" + message(
        b(1, TENANT), u(2, 1), b(3, "bad_signature"), b(4, "the signature does not verify"),
        b(5, "alice@fabrikam.com"), b(6, "e1"), b(7, "fuzz-rsa"), b(9, "RS256"), u(11, NOW * 1000))
    yield "records", "push-request", b"\x06" + push_request(1, apns_device, apns_payload, (NOW + 3600) * 1000)
    yield "records", "delivery-receipt", b"\x07" + message(
        b(1, "5f4dcc3b5aa765d61d8327deb882cf99"), b(2, TENANT), b(3, "alice@fabrikam.com"), u(4, 1),
        u(5, 1), u(6, 200), u(8, 1), u(9, 120), u(10, NOW * 1000))
    yield "records", "subscription-change", b"\x08" + subscribe
    yield "records", "subscription", b"\x09" + subscription(1, apns_device, "com.example.mail",
                                                            NOW * 1000, (NOW + 86400) * 1000)
    yield "records", "key-credential", b"\x0a" + cred_ec
    yield "records", "tenant", b"\x0b" + tenant([cred_rsa, cred_ec])

    # flags: bit 0 subscription, bit 1 right key, bit 2 right partition, bit 3 tombstone.
    yield "auth_coalesce_records", "change-placed", b"\x06\x06" + change
    yield "auth_coalesce_records", "change-misrouted", b"\x02\x06" + change
    yield "auth_coalesce_records", "change-foreign-key", b"\x04\x06" + field("contoso.com/alice@fabrikam.com") + change
    yield "auth_coalesce_records", "change-tombstone", b"\x0e\x06"
    yield "auth_coalesce_records", "subscribe", b"\x07\x06" + subscribe
    yield "auth_coalesce_records", "unsubscribe", b"\x07\x06" + unsubscribe

    yield "fanout_records", "unread-count", b"\x00" + unread_count("alice@fabrikam.com", 5, 42)
    key = f"{TENANT}/alice@fabrikam.com/apns/{apns_device}"
    ops = b"".join([
        b"\x00" + field(key) + field(subscription(1, apns_device, "com.example.mail", NOW * 1000, (NOW + 60) * 1000)),
        b"\x00" + field(f"{TENANT}/alice@fabrikam.com/fcm/fcm-token:APA91b")
        + field(subscription(2, "fcm-token:APA91b", "fabrikam-mail", NOW * 1000 + 1, (NOW + 86400) * 1000)),
        b"\x08" + field(f"{TENANT}/alice@fabrikam.com") + field(struct.pack("<I", NOW + 120)),
        b"\x04" + field(key) + field(b""),
        b"\x01" + field(key) + field(subscription(1, apns_device, "com.example.mail", NOW * 1000, (NOW + 60) * 1000)),
        b"\x0d" + field("") + field(b""),
    ])
    yield "fanout_records", "subscriptions", b"\x01\x01" + ops

    yield "deliver_records", "apns", push_request(1, apns_device, apns_payload, (NOW + 3600) * 1000)
    yield "deliver_records", "fcm", push_request(2, "fcm-token:APA91b", fcm_payload, (NOW + 3600) * 1000)
    yield "deliver_records", "probe-expired", push_request(3, "probe-1", b"", (NOW - 1) * 1000)

    # flags: bit 0 FCM, bit 1 the push expires, bit 2 no Retry-After; status; Retry-After; body.
    def answer(flags, status, retry_after, body):
        return bytes([flags]) + struct.pack("<H", status) + field(retry_after) + body
    yield "provider_answers", "apns-200", answer(2, 200, "", b"")
    yield "provider_answers", "apns-410", answer(2, 410, "", b'{"reason":"Unregistered","timestamp":1800000000000}')
    yield "provider_answers", "apns-403", answer(0, 403, "", b'{"reason":"ExpiredProviderToken"}')
    yield "provider_answers", "apns-429", answer(2, 429, "5", b'{"reason":"TooManyRequests"}')
    yield "provider_answers", "apns-503", answer(4, 503, "", b'{"reason":"ServiceUnavailable"}')
    yield "provider_answers", "fcm-404", answer(3, 404, "", json.dumps({"error": {
        "code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}).encode())
    yield "provider_answers", "fcm-429", answer(3, 429, "120", json.dumps({"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"errorCode": "QUOTA_EXCEEDED"}]}}).encode())
    yield "provider_answers", "fcm-token", answer(1, 200, "", b'{"access_token":"ya29.c.b0","expires_in":3599,"token_type":"Bearer"}')

    json_body = json.dumps({"notifications": [
        {"mailbox": "alice@fabrikam.com", "unreadCount": 5, "sequence": 42, "sourceTime": NOW * 1000},
        {"mailbox": "bob@fabrikam.com", "unreadCount": 0, "sequence": 7}]}).encode()
    yield "ingress_notifications", "json", b"\x0a" + field("application/json; charset=utf-8") + json_body
    yield "ingress_notifications", "json-no-type", b"\x0a" + field("") + json_body
    yield "ingress_notifications", "protobuf", b"\x0a" + field("application/x-protobuf") + message(
        b(1, notification("alice@fabrikam.com", 5, 42)), b(1, notification("bob@fabrikam.com", 1, 0)))

    yield "ingress_subscriptions", "apns", b"\x00" + json.dumps({
        "mailbox": "alice@fabrikam.com", "platform": "apns", "deviceToken": apns_device,
        "appId": "com.example.mail", "environment": "sandbox"}).encode()
    yield "ingress_subscriptions", "fcm", b"\x00" + json.dumps({
        "mailbox": "alice@fabrikam.com", "platform": "fcm", "deviceToken": "fcm-token:APA91b",
        "appId": "fabrikam-mail"}).encode()
    yield "ingress_subscriptions", "unsubscribe", b"\x01" + json.dumps({
        "mailbox": "alice@fabrikam.com", "platform": "probe", "deviceToken": "probe-1"}).encode()

    yield "token", "rs256-kid", token.encode()
    yield "token", "es256-x5t", jwt({"alg": "ES256", "x5t": x5t(keys["ec.der"])}, CLAIMS).encode()
    yield "token", "ps256-aud-array", jwt({"alg": "PS256", "kid": "fuzz-rsa"},
                                          dict(CLAIMS, aud=["other", "pushrelay"])).encode()
    yield "token", "none", jwt({"alg": "none", "kid": "fuzz-rsa"}, CLAIMS, b"").encode()
    yield "token", "hs256-jku", jwt({"alg": "HS256", "jku": "https://attacker.example/jwks"}, CLAIMS).encode()

    def signed(signer, header, claims):
        return bytes([signer]) + field(json.dumps(header, separators=(",", ":"))) + \
            json.dumps(claims, separators=(",", ":")).encode()
    yield "token_claims", "es256", signed(2, {"alg": "ES256", "kid": "fuzz-ec", "typ": "JWT"}, CLAIMS)
    yield "token_claims", "rs256", signed(0, {"alg": "RS256", "kid": "fuzz-rsa"}, CLAIMS)
    yield "token_claims", "ps256-aud-array", signed(1, {"alg": "PS256", "kid": "fuzz-rsa"},
                                                   dict(CLAIMS, aud=["other", "pushrelay"]))
    yield "token_claims", "es256-expired", signed(3, {"alg": "ES256", "kid": "fuzz-ec"},
                                                 dict(CLAIMS, nbf=NOW - 7200, exp=NOW - 3600))
    yield "token_claims", "es256-wrong-issuer", signed(2, {"alg": "ES256", "kid": "fuzz-ec"},
                                                      dict(CLAIMS, iss="someone@contoso.com"))

    yield "jwks", "rsa-ec-x5c", json.dumps({"keys": [
        {"kty": "RSA", "use": "sig", "kid": "rsa-1", "n": b64url(rsa_n), "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64url(ec_point[1:33]), "y": b64url(ec_point[33:])},
        {"kty": "RSA", "kid": "cert-1", "x5t": x5t(keys["rsa.der"]), "n": b64url(rsa_n), "e": "AQAB",
         "x5c": [base64.b64encode(keys["rsa.der"]).decode()]},
        {"kty": "RSA", "use": "enc", "kid": "enc-1", "n": b64url(rsa_n), "e": "AQAB"},
    ]}).encode()

    yield "credentials", "rsa-der", b"\x00" + keys["rsa.der"]
    yield "credentials", "ec-der", b"\x00" + keys["ec.der"]
    yield "credentials", "ec-pem", b"\x01" + keys["ec.pem"]
    yield "credentials", "rsa-spki", b"\x02" + rsa_spki
    yield "credentials", "ec-spki", b"\x02" + ec_spki
    yield "credentials", "key-credential", b"\x03" + cred_ec
    yield "credentials", "tenant", b"\x04" + tenant([cred_rsa, cred_ec])


def main():
    keys = key_material()
    written = {}
    for target, name, data in seeds(keys):
        folder = os.path.join(ROOT, target)
        if target not in written:
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            written[target] = 0
        with open(os.path.join(folder, name), "wb") as out:
            out.write(data)
        written[target] += 1
    for target, count in sorted(written.items()):
        print(f"{target}: {count} seeds")


if __name__ == "__main__":
    main()
