"""Safe by default: off loopback, no writing role without a key unless opened on purpose; the
placeholder keys shipped in deploy/ are never keys (shared/web/exposure.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings
from shared.web.auth import PlaceholderKeyError, parse_keys_file
from shared.web.exposure import is_loopback, refuse_unsafe_start, start_problems

ROOT = Path(__file__).resolve().parent.parent.parent
SECRET = ROOT / "deploy" / "k8s" / "base" / "secret.yaml"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "192.168.0.7", "eduranker.example.com",
                                  "localhost.example.com"])
def test_addresses_others_reach(host: str) -> None:
    assert not is_loopback(host)


def settings(**values: Any) -> Settings:
    return Settings(**values)


@pytest.mark.parametrize(("service_writes", "role", "setting"), [
    (("admin",), "admin", "EDURANKER_ADMIN_KEYS"),
    (("feedback",), "feedback", "EDURANKER_FEEDBACK_KEYS"),
])
def test_an_open_writing_role_on_a_public_address_is_refused_with_what_to_set(
        service_writes: tuple, role: str, setting: str) -> None:
    (problem,) = start_problems(settings(host="0.0.0.0"), service_writes)
    assert f"with no {role} key: give {setting}" in problem
    for way_out in ("EDURANKER_API_KEYS_FILE", "EDURANKER_HOST=127.0.0.1", "EDURANKER_ALLOW_OPEN_WRITES=true",
                    "(EDURANKER_HOST=0.0.0.0)"):
        assert way_out in problem


def test_loopback_keys_and_the_explicit_opening_all_start() -> None:
    assert start_problems(settings(), ("admin", "feedback")) == []  # make run, the tests: 127.0.0.1
    assert start_problems(settings(host="0.0.0.0", admin_keys="a-real-key"), ("admin",)) == []
    assert start_problems(settings(host="0.0.0.0", allow_open_writes=True), ("admin", "feedback")) == []
    # A key of another role does not close this one: an admin key alone leaves feedback open.
    (problem,) = start_problems(settings(host="0.0.0.0", admin_keys="a-real-key"), ("admin", "feedback"))
    assert "EDURANKER_FEEDBACK_KEYS" in problem
    assert start_problems(settings(host="0.0.0.0"), ()) == []  # nothing written: nothing to open


def test_keys_from_the_keys_file_close_the_role(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("feedback a-real-feedback-key\n")
    assert start_problems(settings(host="0.0.0.0", api_keys_file=keys), ("feedback",)) == []
    (problem,) = start_problems(settings(host="0.0.0.0", api_keys_file=keys), ("admin",))
    assert "EDURANKER_ADMIN_KEYS" in problem
    # A file that cannot be read yet refuses the role's calls with 503: closed, so the start goes on.
    assert start_problems(settings(host="0.0.0.0", api_keys_file=tmp_path / "absent"), ("admin",)) == []


def test_a_container_published_on_loopback_is_judged_by_where_it_is_published() -> None:
    inside = {"host": "0.0.0.0"}  # what a container must listen on behind a published port
    assert start_problems(settings(**inside, published_host="127.0.0.1"), ("admin",)) == []
    (problem,) = start_problems(settings(**inside, published_host="0.0.0.0"), ("admin",))
    assert "(EDURANKER_PUBLISHED_HOST=0.0.0.0)" in problem


def shipped_secret() -> dict[str, str]:
    return yaml.safe_load(SECRET.read_text())["stringData"]


def test_the_shipped_placeholders_are_refused_wherever_the_service_listens() -> None:
    shipped = {name.removeprefix("EDURANKER_").lower(): value for name, value in shipped_secret().items()
               if name != "EDURANKER_STORE_URL"}
    problems = start_problems(settings(**shipped, kafka_security_protocol="SASL_SSL"), ())
    named = sorted(p.split()[0] for p in problems)
    assert named == ["EDURANKER_ADMIN_KEYS", "EDURANKER_FEEDBACK_KEYS", "EDURANKER_KAFKA_SASL_PASSWORD",
                     "EDURANKER_PAGE_FEEDBACK_KEY"]
    assert all("holds a placeholder (change-me...)" in p and "secrets.token_urlsafe" in p for p in problems)
    # One placeholder among real keys is still refused; an unused SASL password is not looked at.
    assert start_problems(settings(feedback_keys="real-one,Change-Me-Later"), ())
    assert start_problems(settings(kafka_sasl_password="change-me"), ()) == []


@pytest.mark.parametrize("text", ["admin change-me-admin\n", '{"feedback": ["ok-key", "changeme"]}'])
def test_a_keys_file_with_a_placeholder_is_refused_at_start_and_when_read_again(tmp_path: Path,
                                                                               text: str) -> None:
    with pytest.raises(PlaceholderKeyError, match="placeholder"):
        parse_keys_file(text)
    keys = tmp_path / "keys"
    keys.write_text(text)
    (problem,) = start_problems(settings(api_keys_file=keys), ())
    assert problem.startswith(f"the keys file {keys}: a ") and "change-me-admin" not in problem


def test_the_refusal_exits_before_anything_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        refuse_unsafe_start(settings(host="0.0.0.0"), "collector", writes=("feedback",))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the collector refuses to start (docs/security.md):\n"
                          "- writing feedback (the feedback role) would be open to anyone")
    refuse_unsafe_start(settings(), "collector", writes=("feedback",))  # loopback: returns
