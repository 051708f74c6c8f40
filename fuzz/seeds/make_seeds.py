#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/): real, valid inputs of each parser, made with
Python's `cryptography`, so each run starts from the accepted paths. Deterministic apart from key generation;
re-run only to change the seeds."""
import base64, json, os, struct, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, padding, utils
from cryptography import x509
from cryptography.x509.oid import NameOID

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")

def b64(data): return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def ec_jwk(key, crv, size):
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": b64(n.x.to_bytes(size, "big")), "y": b64(n.y.to_bytes(size, "big"))}

def rsa_jwk(key):
    n = key.public_key().public_numbers()
    return {"kty": "RSA", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")), "e": b64(n.e.to_bytes(3, "big"))}

p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
keys = {"p256": (p256, ec_jwk(p256, "P-256", 32)), "p384": (p384, ec_jwk(p384, "P-384", 48)), "rsa2048": (rsa2048, rsa_jwk(rsa2048))}

for name, (key, jwk) in keys.items():
    put("jwk", name + ".json", json.dumps(jwk))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    put("spki", name + ".der", spki)
with open(os.path.join(root, "..", "..", "core", "testdata", "compressed-p256.spki.der"), "rb") as f:
    put("spki", "compressed-p256.der", f.read())

def jws(key, jwk, alg, url, payload, kid=None):
    header = {"alg": alg, "nonce": "AAABAQ-nonce", "url": url}
    if kid: header["kid"] = kid
    else: header["jwk"] = jwk
    protected = b64(json.dumps(header).encode())
    body = "" if payload is None else b64(json.dumps(payload).encode())
    signing_input = (protected + "." + body).encode()
    if alg == "RS256":
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        size, digest = (32, hashes.SHA256()) if alg == "ES256" else (48, hashes.SHA384())
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest)))
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return json.dumps({"protected": protected, "payload": body, "signature": b64(signature)})

base = "https://acme.quarry.example.com/acme"
put("jws", "new-account-es256.json", jws(p256, keys["p256"][1], "ES256", base + "/new-acct", {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.com"]}))
put("jws", "new-order-es384-kid.json", jws(p384, None, "ES384", base + "/new-order", {"identifiers": [{"type": "dns", "value": "example.com"}]}, kid=base + "/acct/1"))
put("jws", "post-as-get-rs256.json", jws(rsa2048, keys["rsa2048"][1], "RS256", base + "/order/1", None))

def csr(key, names, algorithm):
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)

put("csr", "p256.der", csr(p256, ["example.com", "www.example.com"], hashes.SHA256()))
put("csr", "p384.der", csr(p384, ["*.example.com"], hashes.SHA384()))
put("csr", "rsa2048.der", csr(rsa2048, ["a.example.org"], hashes.SHA256()))
for seed in ["compressed-p256.csr.der", "sha1-rsa.csr.der"]:
    with open(os.path.join(root, "..", "..", "core", "testdata", seed), "rb") as f:
        put("csr", seed, f.read())

for i, (kind, value) in enumerate([(0, "example.com"), (0, "*.Example.COM"), (0, "xn--bcher-kva.example"), (0, "localhost"),
                                    (0, "a.b.c.d.co.uk"), (1, "192.0.2.1"), (1, "2001:db8::1"), (1, "::ffff:192.0.2.1")]):
    put("identifiers", f"{i}", bytes([kind]) + value.encode())

sig = b"\r\n\r\n\x00\r\nQUIT\n"
put("client_addr", "proxy-v4", sig + bytes([0x21, 0x11]) + struct.pack(">H", 12) + bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 443, 8443))
put("client_addr", "proxy-v6", sig + bytes([0x21, 0x21]) + struct.pack(">H", 40) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack(">HH", 443, 8443) + b"\x04\x00\x01\x00")
put("client_addr", "proxy-local", sig + bytes([0x20, 0x00]) + struct.pack(">H", 0))
put("client_addr", "xff", "198.51.100.1, 10.0.0.2\n[2001:db8::7]:443")

def name(text):
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\x00"

def response(qname, qtype, answers):
    header = struct.pack(">HHHHHH", 0x1234, 0x8180, 1, len(answers), 0, 0)
    question = name(qname) + struct.pack(">HH", qtype, 1)
    body = b"".join(name(qname) + struct.pack(">HHIH", rtype, 1, 300, len(rdata)) + rdata for rtype, rdata in answers)
    return header + question + body

def caa(flags, tag, value):
    return bytes([flags, len(tag)]) + tag.encode() + value.encode()

def txt(*strings):
    return b"".join(bytes([len(s)]) + s.encode() for s in strings)

put("dns_answers", "caa-issue", response("quarry-test.org", 257, [(257, caa(0, "issue", "quarry.example.com; validationmethods=dns-01")), (257, caa(0, "issuewild", ";"))]))
put("dns_answers", "caa-critical", response("quarry-test.org", 257, [(257, caa(128, "tbs", "unknown")), (257, caa(0, "iodef", "mailto:x@example.com"))]))
put("dns_answers", "caa-account", response("quarry-test.org", 257, [(257, caa(0, "issue", "quarry.example.com; accounturi=https://acme.quarry.example.com/acme/acct/1"))]))
put("dns_answers", "txt", response("_acme-challenge.quarry-test.org", 16, [(16, txt("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")), (16, txt("part one", "part two"))]))

caa_sets = {
    "issue": "\x00issue quarry.example.com\n\x00issuewild ;",
    "account-and-methods": "\x00issue quarry.example.com; accounturi=https://acme.quarry.example.com/acme/acct/1; validationmethods=dns-01,http-01",
    "critical-unknown": "\x80tbs something\n\x00iodef mailto:security@quarry-test.org",
    "other-ca": "\x00issue other-ca.example\n\x00issuewild quarry.example.com",
}
for seed, text in caa_sets.items():
    put("caa", seed, text.encode("latin-1"))

payloads = {
    "new-account": {"termsOfServiceAgreed": True, "contact": ["mailto:a@example.com"], "onlyReturnExisting": False,
                    "externalAccountBinding": {"protected": b64(b'{"alg":"HS256","kid":"kid-1","url":"https://x/new-acct"}'), "payload": b64(json.dumps(keys["p256"][1]).encode()), "signature": b64(bytes(32))}},
    "account-update": {"contact": ["mailto:b@example.com"], "status": "deactivated"},
    "new-order": {"identifiers": [{"type": "dns", "value": "example.com"}, {"type": "ip", "value": "192.0.2.1"}, {"type": "dns", "value": "*.example.org"}], "profile": "classic", "replaces": "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"},
    "finalize": {"csr": b64(csr(p256, ["example.com"], hashes.SHA256()))},
    "key-change": {"account": base + "/acct/1", "oldKey": keys["p384"][1]},
    "revocation": {"certificate": b64(x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([])).public_key(p256.public_key()).serial_number(7).not_valid_before(__import__("datetime").datetime(2026, 1, 1)).not_valid_after(__import__("datetime").datetime(2026, 4, 1)).sign(p256, hashes.SHA256()).public_bytes(serialization.Encoding.DER)), "reason": 1},
}
for seed, payload in payloads.items():
    put("acme_payloads", seed + ".json", json.dumps(payload))
print("seeds written under", os.path.normpath(root))
