"""HTTPS served directly from the cert and key files, and the REST settings' clean errors: each
names its setting, with no traceback."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.cli_run import assert_clean_failure, cli
from tests.rest.conftest import BRAND, RestEnv, bearer, deposit, wait_for_users


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_from_cert_and_key_files(rest_env: RestEnv):
    token = rest_env.make_key("ops", BRAND)
    cert, key = _self_signed(rest_env.tmp)
    config = rest_env.config(tls_cert_file=str(cert), tls_key_file=str(key))
    port = yaml.safe_load(config.read_text())["rest"]["port"]
    proc = rest_env.processes.start(config, rest_env.tmp / "tls.log", name="tls")
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://localhost:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/v1/health", verify=context, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    from tests.support.crash import wait_until

    wait_until(up, "the HTTPS API", 60, alive=[proc])
    answer = httpx.post(url + "/v1/events", params={"stream": "payments"}, json=deposit("t1", "tx"),
                        headers=bearer(token), verify=context)
    assert answer.status_code == 200
    wait_for_users(rest_env, lambda u: "t1" in u, "t1 applied")
    try:
        httpx.get(f"http://localhost:{port}/v1/health", timeout=2)
        plain_answered = True
    except httpx.HTTPError:
        plain_answered = False
    assert not plain_answered


def test_settings_errors_name_the_setting(rest_env: RestEnv, tmp_path: Path):
    config = rest_env.config(tls_cert_file=str(tmp_path / "cert.pem"))
    done = cli(["run", "--config", str(config)])
    assert_clean_failure(done, 2, "rest", "tls_key_file")
    config = rest_env.config(max_batch_events=0)
    assert_clean_failure(cli(["run", "--config", str(config)]), 2, "rest.max_batch_events")
    # Without a PII key ring the inbox could not keep events encrypted: refused at start.
    document = yaml.safe_load(rest_env.config().read_text())
    document["pii"].pop("keys_file")
    config.write_text(yaml.safe_dump(document))
    assert_clean_failure(cli(["run", "--config", str(config)]), 2, "pii.keys_file")
