"""A real Vault client (hvac) against the sidecar: the only change is the URL.

Usage: python3 hvac_roundtrip.py URL TOKEN
Exits non-zero on the first failed check.
"""
import base64
import sys

import hvac
from hvac.exceptions import InvalidRequest

url, token = sys.argv[1], sys.argv[2]
client = hvac.Client(url=url, token=token)
assert client.is_authenticated(), "token not accepted"

transit = client.secrets.transit
transit.create_key(name="hvac-pii")
key = transit.read_key(name="hvac-pii")["data"]
assert key["type"] == "aes256-gcm96" and key["latest_version"] == 1, key

pt = base64.b64encode(b"jane.doe@example.com").decode()
ct = transit.encrypt_data(name="hvac-pii", plaintext=pt)["data"]["ciphertext"]
assert ct.startswith("vault:v1:"), ct
assert transit.decrypt_data(name="hvac-pii", ciphertext=ct)["data"]["plaintext"] == pt

transit.rotate_key(name="hvac-pii")
rewrapped = transit.rewrap_data(name="hvac-pii", ciphertext=ct)["data"]["ciphertext"]
assert rewrapped.startswith("vault:v2:"), rewrapped
assert transit.decrypt_data(name="hvac-pii", ciphertext=rewrapped)["data"]["plaintext"] == pt

batch = [{"plaintext": base64.b64encode(f"user-{i}".encode()).decode(), "reference": str(i)} for i in range(100)]
res = transit.encrypt_data(name="hvac-pii", plaintext="", batch_input=batch)["data"]["batch_results"]
assert len(res) == 100 and all(r["ciphertext"].startswith("vault:v2:") for r in res)
assert [r["reference"] for r in res] == [str(i) for i in range(100)]

h = transit.generate_hmac(name="hvac-pii", hash_input=pt)["data"]["hmac"]
assert transit.verify_signed_data(name="hvac-pii", hash_input=pt, hmac=h)["data"]["valid"] is True

try:
    transit.decrypt_data(name="hvac-pii", ciphertext="vault:v1:AAAA")
    raise AssertionError("tampered ciphertext accepted")
except InvalidRequest as e:
    assert "invalid ciphertext length" in str(e), e

assert "hvac-pii" in transit.list_keys()["data"]["keys"]
print("hvac round trip ok")
