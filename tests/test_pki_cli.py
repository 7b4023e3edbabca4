"""`fleetsim pki` end to end: the installed console script in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim.pki import Fault, Pki

pytestmark = pytest.mark.integration  # the CLI, as a subprocess

FLEETSIM = Path(sys.executable).with_name("fleetsim")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FLEETSIM), *map(str, args)], capture_output=True, text=True, timeout=120)


def ok(*args: str | Path) -> str:
    r = run(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI made through the CLI, with 4 healthy devices in lot a and 2 in lot b."""
    d = tmp_path_factory.mktemp("cli") / "pki"
    out = ok("pki", "init", d, "--org", "acme", "--trust-domain", "acme.test", "--server-name", "mqtt.acme.test",
             "--crl-url", "http://crl.acme.test/issuing.crl", "--ca-key-type", "ecdsa-p384",
             "--server-key-type", "rsa-2048")
    assert "created PKI" in out
    ok("pki", "issue", d, "--count", "4", "--lot", "a", "--model", "pulse-oximeter")
    ok("pki", "issue", d, "--count", "2", "--lot", "b", "--prefix", "ecg", "--key-type", "ed25519", "--days", "30")
    return d


def test_init_options_reach_the_pki(root: Path) -> None:
    pki = Pki.open(root)
    assert pki.inventory.org == "acme" and pki.inventory.trust_domain == "acme.test"
    assert pki.inventory.crl_url == "http://crl.acme.test/issuing.crl"
    server = pki.layout.server_cert.read_bytes()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(server)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mqtt.acme.test" in sans.get_values_for_type(x509.DNSName)
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]


def test_issue_reports_count_time_and_rate(tmp_path: Path) -> None:
    ok("pki", "init", tmp_path / "p")
    out = ok("pki", "issue", tmp_path / "p", "-n", "3", "--fault", "expired", "--workers", "1")
    assert "issued 3 ecdsa-p256 identities with fault expired" in out and "/s" in out and " s:" in out
    assert {d.fault for d in Pki.open(tmp_path / "p").devices()} == {Fault.EXPIRED}


def test_list_json_and_filters(root: Path) -> None:
    lines = ok("pki", "list", root, "--json").splitlines()
    devices = [json.loads(line) for line in lines]
    assert len(devices) == 6 and {d["lot"] for d in devices} == {"a", "b"}
    b = [json.loads(x) for x in ok("pki", "list", root, "--json", "--lot", "b").splitlines()]
    assert [d["id"] for d in b] == ["ecg-00001", "ecg-00002"] and b[0]["key_type"] == "ed25519"
    assert len(ok("pki", "list", root, "--json", "--limit", "1").splitlines()) == 1
    assert ok("pki", "list", root, "--json", "--fault", "expired") == ""
    assert len(ok("pki", "list", root, "--json", "--model", "pulse-oximeter").splitlines()) == 4


def test_list_table(root: Path) -> None:
    out = ok("pki", "list", root, "--lot", "a")
    assert "dev-00001" in out and "pulse-oximeter" in out and "4 devices" in out
    assert "showing 2" in ok("pki", "list", root, "--limit", "2")


def test_revoke_reenroll_crl(tmp_path: Path) -> None:
    d = tmp_path / "p"
    ok("pki", "init", d)
    ok("pki", "issue", d, "-n", "6", "--lot", "x")
    ok("pki", "issue", d, "-n", "2", "--lot", "y", "--prefix", "cam")
    assert "revoked 1 device " in ok("pki", "revoke", d, "--device", "dev-00003")
    assert "revoked 2 devices" in ok("pki", "revoke", d, "--lot", "y", "--reason", "cessationOfOperation")
    assert "revoked 2 devices" in ok("pki", "revoke", d, "--fraction", "0.5", "--seed", "3")  # 5 valid left
    pki = Pki.open(d)
    old = pki.device("dev-00003").serial
    assert len(pki.devices(status="revoked")) == 5
    assert "re-enrolled 1" in ok("pki", "reenroll", d, "--device", "dev-00003")
    assert "re-enrolled 2" in ok("pki", "reenroll", d, "--lot", "y")
    pki = Pki.open(d)
    assert pki.device("dev-00003").serial != old and pki.device("dev-00003").status == "valid"
    out = ok("pki", "crl", d)
    assert "number" in out and "thisUpdate" in out and "nextUpdate" in out and "5 revoked serials" in out


@pytest.mark.parametrize(("args", "message"), [
    (("pki", "issue", "{tmp}/missing", "-n", "2"), "no PKI at"),
    (("pki", "issue", "{tmp}", "-n", "2"), "not a fleetsim PKI"),
    (("pki", "issue", "{pki}", "-n", "0"), "count must be positive"),
    (("pki", "issue", "{pki}", "-n", "2", "--key-type", "dsa"), "unknown key type 'dsa'"),
    (("pki", "issue", "{pki}", "-n", "2", "--fault", "meh"), "unknown fault 'meh'"),
    (("pki", "issue", "{pki}", "-n", "two"), "Invalid value for '--count'"),
    (("pki", "issue", "{pki}", "-n", "2", "--bogus"), "No such option: --bogus"),
    (("pki", "issue", "{pki}"), "Missing option '--count'"),
    (("pki", "revoke", "{pki}", "--device", "ghost"), "unknown device(s): ghost"),
    (("pki", "revoke", "{pki}"), "nothing to revoke"),
    (("pki", "revoke", "{pki}", "--device", "dev-00001", "--reason", "boredom"), "unknown revocation reason"),
    (("pki", "reenroll", "{pki}", "--device", "ghost"), "no device 'ghost'"),
    (("pki", "list", "{pki}", "--status", "lost"), "unknown status 'lost'"),
    (("pki", "init", "{tmp}/new", "--ca-key-type", "rsa-512"), "unknown key type"),
    (("pki", "init", "{tmp}/new", "--crl-url", "ldap://x"), "bad CRL URL"),
    (("pki", "init", "{pki}"), "already a PKI"),
    (("pki", "frobnicate"), "No such command 'frobnicate'"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    pki = Pki.init(tmp_path / "pki")
    pki.issue(1)
    r = run(*(a.format(tmp=tmp_path, pki=pki.root) for a in args))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()


def test_corrupt_pem_is_one_line(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki")
    pki.layout.issuing_ca.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    r = run("pki", "issue", pki.root, "-n", "1")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "corrupt PEM" in r.stderr
    assert not list(pki.layout.devices.iterdir())


def test_monitor_and_list_by_role(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    ok("pki", "init", root)
    ok("pki", "issue", root, "-n", "2")
    assert "issued monitor dashboard" in ok("pki", "monitor", root, "dashboard")
    roles = [json.loads(x)["role"] for x in ok("pki", "list", root, "--json").splitlines()]
    assert roles == ["device", "device", "monitor"]
    assert [json.loads(x)["id"] for x in ok("pki", "list", root, "--json", "--role", "monitor").splitlines()] == [
        "dashboard"]


def test_crl_renew_only_when_due(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    ok("pki", "init", root)
    assert "not due for renewal yet" in ok("pki", "crl", root, "--renew")
    out = ok("pki", "crl", root, "--days", "0.5")
    assert "number 2" in out and "no local embedded broker registered" in out
