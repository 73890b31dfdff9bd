"""PII key ring, AES-GCM tokens and lookup hashes (smartico_stream.pii.keys / .crypto)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.pii.crypto import DecryptError, decrypt, encrypt, lookup_hash, reencrypt, token_key_id
from smartico_stream.pii.keys import KeyRing, PiiKeyError, add_key, generate_key_ring, key_ring_to_json

AAD = b"brand-1\x1fuser-42\x1femail"
# Fixed, recognisable key material so tests can assert that none of it leaks into messages.
K1 = bytes(range(32))
K2 = bytes(range(32, 64))
HMAC_KEY = bytes(range(64, 112))
B64 = {name: base64.b64encode(value).decode() for name, value in {"k1": K1, "k2": K2, "hmac": HMAC_KEY}.items()}


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(keys={"k1": K1}, current="k1", hmac_key=HMAC_KEY)


def assert_no_secrets(message: str) -> None:
    for secret in (*B64.values(), K1.hex(), K2.hex(), HMAC_KEY.hex(), repr(K1), repr(K2), repr(HMAC_KEY)):
        assert secret not in message
    # Not even a recognisable fragment of a base64 key.
    for encoded in B64.values():
        assert encoded[:12] not in message


# --- encrypt / decrypt ---------------------------------------------------------------------


def test_round_trip_str_and_bytes(ring: KeyRing) -> None:
    assert decrypt(ring, encrypt(ring, "Élodie Ковальчук", AAD), AAD) == "Élodie Ковальчук".encode()
    assert decrypt(ring, encrypt(ring, b"\x00\xffraw", AAD), AAD) == b"\x00\xffraw"
    assert decrypt(ring, encrypt(ring, "", AAD), AAD) == b""


def test_token_format_is_the_documented_one(ring: KeyRing) -> None:
    # Pinned independently of the module: stored tokens must stay readable across releases.
    plaintext = b"alice@example.com"
    token = encrypt(ring, plaintext, AAD)
    assert token[:2] == b"v1"
    assert token[2] == 2 and token[3:5] == b"k1"
    header, nonce, sealed = token[:5], token[5:17], token[17:]
    assert len(token) == 2 + 1 + 2 + 12 + len(plaintext) + 16
    assert AESGCM(K1).decrypt(nonce, sealed, header + AAD) == plaintext
    assert token_key_id(token) == "k1"


def test_aad_mismatch_fails(ring: KeyRing) -> None:
    token = encrypt(ring, "alice@example.com", AAD)
    for other in (b"brand-1\x1fuser-43\x1femail", b"brand-2\x1fuser-42\x1femail", b"brand-1\x1fuser-42\x1fphone", b""):
        with pytest.raises(DecryptError, match="authentication") as err:
            decrypt(ring, token, other)
        assert "alice" not in str(err.value)


def test_tampering_any_byte_fails(ring: KeyRing) -> None:
    plaintext = "alice@example.com"
    token = encrypt(ring, plaintext, AAD)
    for index in range(len(token)):
        for flip in (0x01, 0x80):
            tampered = bytearray(token)
            tampered[index] ^= flip
            with pytest.raises(DecryptError) as err:
                decrypt(ring, bytes(tampered), AAD)
            assert plaintext not in str(err.value)
            assert_no_secrets(str(err.value))


@pytest.mark.parametrize(
    "token",
    [b"", b"v", b"v1", b"v2\x02k1" + bytes(40), b"v1\x00" + bytes(40), b"v1\x21" + b"k" * 33 + bytes(40), b"v1\x05k1"],
)
def test_malformed_tokens_fail_cleanly(ring: KeyRing, token: bytes) -> None:
    with pytest.raises(DecryptError, match="malformed"):
        decrypt(ring, token, AAD)
    with pytest.raises(DecryptError, match="malformed"):
        token_key_id(token)


def test_truncated_and_extended_tokens_fail(ring: KeyRing) -> None:
    token = encrypt(ring, "alice@example.com", AAD)
    for bad in (token[:-1], token[: 5 + 12 + 15], token + b"\x00"):
        with pytest.raises(DecryptError):
            decrypt(ring, bad, AAD)


def test_non_bytes_inputs_are_rejected(ring: KeyRing) -> None:
    with pytest.raises(DecryptError):
        decrypt(ring, "v1..", AAD)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encrypt(ring, "x", "brand\x1fuser")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encrypt(ring, 42, AAD)  # type: ignore[arg-type]


def test_unencodable_plaintext_error_does_not_quote_it(ring: KeyRing) -> None:
    with pytest.raises(ValueError) as err:
        encrypt(ring, "secret\ud800", AAD)
    assert "secret" not in str(err.value) and "ud800" not in str(err.value)


def test_unknown_key_id_fails_naming_the_id(ring: KeyRing) -> None:
    other = KeyRing(keys={"k0": K2}, current="k0", hmac_key=HMAC_KEY)
    token = encrypt(other, "alice@example.com", AAD)
    with pytest.raises(DecryptError, match="'k0'") as err:
        decrypt(ring, token, AAD)
    assert "k1" in str(err.value)  # and what the ring does have
    assert "alice" not in str(err.value)
    assert_no_secrets(str(err.value))


def test_same_key_id_with_different_key_fails_authentication(ring: KeyRing) -> None:
    impostor = KeyRing(keys={"k1": K2}, current="k1", hmac_key=HMAC_KEY)
    with pytest.raises(DecryptError, match="authentication"):
        decrypt(ring, encrypt(impostor, "x", AAD), AAD)


def test_nonces_differ(ring: KeyRing) -> None:
    tokens = {encrypt(ring, "alice@example.com", AAD) for _ in range(50)}
    assert len(tokens) == 50
    assert len({token[5:17] for token in tokens}) == 50


def test_rotation_round_trip(ring: KeyRing) -> None:
    old_token = encrypt(ring, "alice@example.com", AAD)
    rotated = add_key(ring, "k2")
    assert rotated.current == "k2" and set(rotated.keys) == {"k1", "k2"}
    assert rotated.hmac_key == ring.hmac_key  # lookup hashes survive key rotation
    assert ring.current == "k1"  # add_key returns a new ring; the old one is untouched

    assert decrypt(rotated, old_token, AAD) == b"alice@example.com"  # old rows still readable
    assert token_key_id(old_token) == "k1"  # != rotated.current, so it is due for re-encryption
    new_token = reencrypt(rotated, old_token, AAD)
    assert token_key_id(new_token) == "k2"
    assert decrypt(rotated, new_token, AAD) == b"alice@example.com"
    assert token_key_id(encrypt(rotated, "bob@example.com", AAD)) == "k2"

    # Step 3 of rotation: once k1 is dropped, k1 tokens are unreadable, k2 tokens are fine.
    retired = KeyRing(keys={"k2": rotated.key("k2")}, current="k2", hmac_key=rotated.hmac_key)
    assert decrypt(retired, new_token, AAD) == b"alice@example.com"
    with pytest.raises(DecryptError, match="'k1'"):
        decrypt(retired, old_token, AAD)
    # The old ring cannot read what the new key wrote.
    with pytest.raises(DecryptError, match="'k2'"):
        decrypt(ring, new_token, AAD)


def test_reencrypt_keeps_the_aad_binding(ring: KeyRing) -> None:
    rotated = add_key(ring, "k2")
    token = reencrypt(rotated, encrypt(ring, "x", AAD), AAD)
    with pytest.raises(DecryptError):
        decrypt(rotated, token, b"other")
    with pytest.raises(DecryptError):
        reencrypt(rotated, encrypt(ring, "x", AAD), b"other")


@settings(max_examples=300, deadline=None)
@given(plaintext=st.text(), aad=st.binary())
def test_round_trip_property(plaintext: str, aad: bytes) -> None:
    ring = KeyRing(keys={"k1": K1}, current="k1", hmac_key=HMAC_KEY)
    assert decrypt(ring, encrypt(ring, plaintext, aad), aad) == plaintext.encode()


# --- lookup hashes -------------------------------------------------------------------------


def test_lookup_hash_is_stable_and_pinned(ring: KeyRing) -> None:
    digest = lookup_hash(ring, "alice@example.com", "email")
    assert digest == lookup_hash(ring, "alice@example.com", "email")
    # Pinned to the documented construction: stored hashes must not change between releases.
    expected = hmac.new(HMAC_KEY, b"email\x1falice@example.com", hashlib.sha256).hexdigest()
    assert digest == expected and len(digest) == 64


def test_lookup_hash_differs_across_fields_and_values(ring: KeyRing) -> None:
    assert lookup_hash(ring, "+4930123456", "email") != lookup_hash(ring, "+4930123456", "phone")
    assert lookup_hash(ring, "alice@example.com", "email") != lookup_hash(ring, "bob@example.com", "email")
    # The separator keeps field/value boundaries unambiguous.
    with pytest.raises(ValueError):
        lookup_hash(ring, "b", "a\x1f")
    with pytest.raises(ValueError):
        lookup_hash(ring, "b", "")


def test_lookup_hash_depends_on_the_hmac_key_only(ring: KeyRing) -> None:
    other_hmac = KeyRing(keys={"k1": K1}, current="k1", hmac_key=os.urandom(32))
    assert lookup_hash(ring, "alice@example.com", "email") != lookup_hash(other_hmac, "alice@example.com", "email")
    # Rotating the encryption keys does not change lookup hashes.
    assert lookup_hash(add_key(ring, "k2"), "alice@example.com", "email") == lookup_hash(
        ring, "alice@example.com", "email"
    )


# --- key ring ------------------------------------------------------------------------------


def ring_json(**overrides: object) -> str:
    doc: dict[str, object] = {"current": "k2", "keys": {"k1": B64["k1"], "k2": B64["k2"]}, "hmac_key": B64["hmac"]}
    doc.update(overrides)
    return json.dumps(doc)


def test_from_json_accepts_the_documented_format() -> None:
    ring = KeyRing.from_json(ring_json(), origin="test")
    assert ring.current == "k2"
    assert ring.key("k1") == K1 and ring.key("k2") == K2 and ring.hmac_key == HMAC_KEY
    assert KeyRing.from_json(ring_json().encode(), origin="test") == ring


def test_key_lookup_names_the_missing_id() -> None:
    ring = KeyRing.from_json(ring_json(), origin="test")
    with pytest.raises(PiiKeyError) as err:
        ring.key("k0")
    assert str(err.value) == "unknown key id 'k0'; the key ring has k1, k2"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (ring_json(keys={"k1": B64["k1"], "k2": "not*base64!"}), "key 'k2' is not valid base64"),
        (ring_json(keys={"k1": B64["k1"], "k2": B64["k2"][:-4]}), "key 'k2'"),  # broken padding/length
        (ring_json(keys={"k1": B64["k1"], "k2": base64.b64encode(K2[:16]).decode()}), "key 'k2' must be 32 bytes"),
        (ring_json(keys={"k1": B64["k1"], "k2": base64.b64encode(K2 + b"x").decode()}), "got 33 bytes"),
        (ring_json(keys={"k1": B64["k1"], "k2": 12345}), "key 'k2' must be a base64 string"),
        (ring_json(current="k9"), "current key id 'k9' is not in the key ring (it has k1, k2)"),
        (ring_json(current=None), "'current' must be a key id string"),
        (ring_json(keys={"k1": B64["k1"], "bad id!": B64["k2"]}, current="k1"), "invalid key id 'bad id!'"),
        (ring_json(keys={"k1": B64["k1"], "": B64["k2"]}, current="k1"), "invalid key id ''"),
        (ring_json(keys={"k1": B64["k1"], "x" * 33: B64["k2"]}, current="k1"), "invalid key id of 33 characters"),
        # A key pasted where the id goes: refused without echoing it.
        (ring_json(keys={"k1": B64["k1"], B64["k2"]: "k2"}, current="k1"), "invalid key id of 44 characters"),
        (ring_json(keys={}), "'keys' must be a non-empty object"),
        (ring_json(hmac_key="%%%"), "hmac_key is not valid base64"),
        (ring_json(hmac_key=base64.b64encode(HMAC_KEY[:31]).decode()), "hmac_key must be at least 32 bytes"),
        (ring_json(hmac_key=B64["k1"]), "hmac_key must differ from the encryption keys (it equals key 'k1')"),
        (ring_json(keys={"k1": B64["k1"], "k2": B64["k1"]}), "keys 'k1' and 'k2' hold the same key"),
        (ring_json(hmac=B64["hmac"]), "unknown field(s) hmac"),
        (json.dumps({"current": "k1", "keys": {"k1": B64["k1"]}}), "missing field(s) hmac_key"),
        ("[]", "expected a JSON object"),
        ('{"current": "k1", "keys": {"k1": "' + B64["k1"] + '"', "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
    ],
)
def test_from_json_errors_name_origin_and_problem_but_no_key_material(raw: str | bytes, fragment: str) -> None:
    with pytest.raises(PiiKeyError) as err:
        KeyRing.from_json(raw, origin="/etc/smartico/pii-keys.json")
    message = str(err.value)
    assert message.startswith("/etc/smartico/pii-keys.json: ")
    assert fragment in message
    assert_no_secrets(message)


def test_constructor_validates_too() -> None:
    with pytest.raises(PiiKeyError, match="must be 32 bytes"):
        KeyRing(keys={"k1": K1[:16]}, current="k1", hmac_key=HMAC_KEY)
    with pytest.raises(PiiKeyError, match="current key id 'k2'"):
        KeyRing(keys={"k1": K1}, current="k2", hmac_key=HMAC_KEY)
    with pytest.raises(PiiKeyError, match="no encryption keys"):
        KeyRing(keys={}, current="k1", hmac_key=HMAC_KEY)
    with pytest.raises(PiiKeyError, match="invalid key id"):
        KeyRing(keys={"k/1": K1}, current="k/1", hmac_key=HMAC_KEY)


def test_ring_is_immutable_and_its_repr_has_no_keys() -> None:
    source = {"k1": K1}
    ring = KeyRing(keys=source, current="k1", hmac_key=HMAC_KEY)
    source["k2"] = K2  # the caller's dict is copied, not shared
    assert set(ring.keys) == {"k1"}
    with pytest.raises(TypeError):
        ring.keys["k2"] = K2  # type: ignore[index]
    assert repr(ring) == "KeyRing(current='k1', key_ids=[k1])"
    assert_no_secrets(repr(ring))


def write_ring(path: Path, mode: int) -> Path:
    path.write_text(ring_json())
    path.chmod(mode)
    return path


def test_load_from_file(tmp_path: Path) -> None:
    path = write_ring(tmp_path / "pii-keys.json", 0o600)
    ring = KeyRing.load(path, None)
    assert ring.current == "k2" and ring.key("k1") == K1
    assert KeyRing.load(write_ring(tmp_path / "ro.json", 0o400), None).current == "k2"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_refuses_group_or_world_accessible_file(tmp_path: Path, mode: int) -> None:
    path = write_ring(tmp_path / "pii-keys.json", mode)
    with pytest.raises(PiiKeyError) as err:
        KeyRing.load(path, None)
    assert f"chmod 600 {path}" in str(err.value)
    assert_no_secrets(str(err.value))


def test_load_missing_or_odd_file(tmp_path: Path) -> None:
    with pytest.raises(PiiKeyError, match="does not exist"):
        KeyRing.load(tmp_path / "absent.json", None)
    with pytest.raises(PiiKeyError, match="regular file"):
        KeyRing.load(tmp_path, None)


def test_load_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "pii-keys.json"
    path.write_text(ring_json(current="k9"))
    path.chmod(0o600)
    with pytest.raises(PiiKeyError, match=f"^{path}: current key id 'k9'"):
        KeyRing.load(path, None)


def test_load_from_env() -> None:
    ring = KeyRing.load(None, "SMARTICO_PII_KEYS", environ={"SMARTICO_PII_KEYS": ring_json()})
    assert ring.current == "k2" and ring.hmac_key == HMAC_KEY
    with pytest.raises(PiiKeyError, match="SMARTICO_PII_KEYS") as err:
        KeyRing.load(None, "SMARTICO_PII_KEYS", environ={"SMARTICO_PII_KEYS": ring_json(current="k9")})
    assert_no_secrets(str(err.value))


@pytest.mark.parametrize("environ", [{}, {"SMARTICO_PII_KEYS": ""}, {"SMARTICO_PII_KEYS": "  \n"}])
def test_load_from_missing_env(environ: dict[str, str]) -> None:
    with pytest.raises(PiiKeyError, match=r"environment variable SMARTICO_PII_KEYS .* not set or empty"):
        KeyRing.load(None, "SMARTICO_PII_KEYS", environ=environ)


def test_load_needs_exactly_one_source(tmp_path: Path) -> None:
    path = write_ring(tmp_path / "pii-keys.json", 0o600)
    with pytest.raises(PiiKeyError, match="exactly one"):
        KeyRing.load(None, None)
    with pytest.raises(PiiKeyError, match="exactly one"):
        KeyRing.load(path, "SMARTICO_PII_KEYS", environ={"SMARTICO_PII_KEYS": ring_json()})


def test_generate_add_key_to_json_round_trip() -> None:
    ring = generate_key_ring()
    assert ring.current == "k1" and len(ring.key("k1")) == 32 and len(ring.hmac_key) >= 32
    assert ring.hmac_key != ring.key("k1")
    assert generate_key_ring().key("k1") != ring.key("k1")  # random, not derived

    rotated = add_key(ring, "2025-06.k2")
    assert rotated.current == "2025-06.k2" and rotated.key("k1") == ring.key("k1")
    raw = key_ring_to_json(rotated)
    assert KeyRing.from_json(raw, origin="keygen output") == rotated
    doc = json.loads(raw)
    assert doc["current"] == "2025-06.k2" and set(doc["keys"]) == {"k1", "2025-06.k2"}

    token = encrypt(rotated, "alice@example.com", AAD)
    assert decrypt(KeyRing.from_json(raw, origin="reloaded"), token, AAD) == b"alice@example.com"


def test_add_key_refuses_existing_or_bad_id() -> None:
    ring = generate_key_ring("k1")
    with pytest.raises(PiiKeyError, match="'k1' is already in the key ring"):
        add_key(ring, "k1")
    with pytest.raises(PiiKeyError, match="invalid key id"):
        add_key(ring, "k 2")
    with pytest.raises(PiiKeyError, match="invalid key id"):
        generate_key_ring("")
