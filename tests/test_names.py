"""The names defined once (fleetsim.names) and the places that check them agree."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsim import names
from fleetsim.broker.launch import parse_address
from fleetsim.errors import BrokerError, PkiError, ScenarioError
from fleetsim.pki import Pki
from fleetsim.scenario import parse


@pytest.mark.parametrize(("target", "expected"), [
    ("127.0.0.1:8883", ("127.0.0.1", 8883)), ("localhost:1", ("localhost", 1)), ("[::1]:8883", ("::1", 8883)),
    ("127.0.0.1:0", None), ("127.0.0.1:65536", None), ("::1:8883", None), ("host", None), (":8883", None),
    ("embedded", None), ("a b:1", None),
])
def test_hostport(target: str, expected: tuple[str, int] | None) -> None:
    assert names.split_hostport(target) == expected
    if expected is None:
        with pytest.raises(BrokerError, match="HOST:PORT"):
            parse_address(target)
    else:
        assert parse_address(target) == expected


def test_ids_and_tls_versions() -> None:
    assert names.ID_RE.match("dev-00001") and names.ID_RE.match("a" * 64)
    for bad in ("", "-x", "a" * 65, "a/b", "dev\n", "dév"):
        assert not names.ID_RE.match(bad), bad
    assert names.TLS_VERSIONS == ("1.2", "1.3", "any")
    assert names.tls_range("any") == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED)
    assert names.tls_range("1.3") == (ssl.TLSVersion.TLSv1_3,) * 2


def test_the_pki_refuses_an_id_with_a_trailing_newline(make_pki: object) -> None:
    pki: Pki = make_pki()  # type: ignore[operator]
    with pytest.raises(PkiError, match="bad device id"):
        pki.issue(1, prefix="dev\n")


@pytest.mark.integration  # the CLI, as a subprocess
@pytest.mark.parametrize("lot", ["../x", "a/b", "-x", "x" * 65])
def test_a_lot_the_scenarios_refuse_the_pki_refuses_too(tmp_path: Path, lot: str) -> None:
    """One rule for names (fleetsim.names.is_name), applied by `fleetsim pki issue --lot` as by a scenario."""
    Pki.init(tmp_path / "pki")
    cli = subprocess.run([sys.executable, "-m", "fleetsim", "pki", "issue", str(tmp_path / "pki"), "--count", "1",
                          "--lot", lot], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and f"bad lot {lot!r}" in cli.stderr, cli.stderr
    assert names.NAME_HINT in cli.stderr and not list((tmp_path / "pki" / "devices").glob("*.pem"))
    with pytest.raises(ScenarioError, match="is not a valid name") as refused:
        parse(f'[[fleet]]\nmodel = "thermometer"\ncount = 1\nlot = "{lot}"\n', "s.toml")
    assert refused.value.fix == names.NAME_HINT


def test_the_pki_holds_no_model_a_topic_level_cannot_carry(make_pki: object) -> None:
    pki: Pki = make_pki()  # type: ignore[operator]
    with pytest.raises(PkiError, match="bad model 'a/b'"):
        pki.issue(1, model="a/b")


@pytest.mark.integration  # the CLI, as a subprocess
def test_an_error_line_cuts_a_long_value(tmp_path: Path) -> None:
    """A 5,000-character value is shown by its start and its length, in a scenario's error as on the CLI."""
    with pytest.raises(ScenarioError) as refused:
        parse(f'[[fleet]]\nmodel = "thermometer"\ncount = 1\nlot = "{"x" * 5000}"\n', "s.toml")
    assert len(str(refused.value)) < 400 and f"'{'x' * 79}… (5,002 characters) is not" in str(refused.value)
    Pki.init(tmp_path / "pki")
    cli = subprocess.run([sys.executable, "-m", "fleetsim", "pki", "issue", str(tmp_path / "pki"), "--count", "1",
                          "--lot", "y" * 5000], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and len(cli.stderr) < 400, cli.stderr[:300]
    assert "(5,002 characters)" in cli.stderr
    short = tmp_path / ("p" * 60)  # a longish path is kept whole: it is how the user finds the file
    assert str(short) in str(ScenarioError(f"cannot read {short}"))


def test_apostrophes_are_not_quotes_of_a_long_value() -> None:
    text = "the broker's key " + "/p" * 60 + " is unreadable; make the pki's server identity again"
    assert str(ScenarioError(text)) == text
