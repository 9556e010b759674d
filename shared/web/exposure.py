"""What a service refuses to start with: writes open to anyone on an address other than loopback, and
the placeholder keys shipped as examples in deploy/.

The most trusted servers do the same (Redis's protected mode, MongoDB bound to localhost,
Elasticsearch with security on by default). On loopback (`make run`, the tests) a role with no key
stays open, as before. On any other address, each role the service writes with (admin: the
catalogue and the model; feedback: what the model learns from) needs a key, from the settings or
the keys file, unless `EDURANKER_ALLOW_OPEN_WRITES=true` opens it on purpose. A key that starts
with `change-me` is refused wherever the service listens: it was published with EduRanker.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import NoReturn

from shared.settings import Settings, SettingsError, get_settings
from shared.web.auth import (
    NEW_KEY,
    KeyRing,
    KeysFileError,
    PlaceholderKeyError,
    Role,
    is_placeholder,
    parse_keys_file,
)

KEY_SETTINGS = ("admin_keys", "feedback_keys", "search_keys", "page_feedback_key")
WRITES: dict[Role, str] = {"admin": "changing the catalogue and the model (the admin role)",
                           "feedback": "writing feedback (the feedback role)",
                           "search": "search"}


def is_loopback(host: str) -> bool:
    """Only this machine can connect: `localhost`, 127.0.0.0/8 or ::1. An empty host, 0.0.0.0, ::
    and any name or address of a network interface are reachable from elsewhere."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def placeholder_problems(settings: Settings) -> list[str]:
    """One line per setting (or keys file) that holds a placeholder, saying what to put instead."""
    named = [f"EDURANKER_{name.upper()}" for name in KEY_SETTINGS
             if any(is_placeholder(k) for k in getattr(settings, name).get_secret_value().split(","))]
    if settings.kafka_security_protocol.startswith("SASL") and is_placeholder(
            settings.kafka_sasl_password.get_secret_value()):
        named.append("EDURANKER_KAFKA_SASL_PASSWORD")
    problems = [f"{name} holds a placeholder (change-me...), an example published with EduRanker: "
                f"put a real secret there (a new key: {NEW_KEY})" for name in named]
    if settings.api_keys_file is not None:
        try:
            parse_keys_file(settings.api_keys_file.read_text())
        except PlaceholderKeyError as exc:
            problems.append(f"the keys file {settings.api_keys_file}: {exc}")
        except (OSError, UnicodeDecodeError, KeysFileError):
            pass  # not a placeholder: the key ring refuses protected calls until the file is fixed
    return problems


def open_write_problems(settings: Settings, writes: tuple[Role, ...]) -> list[str]:
    """One line per role of `writes` anyone could use: no key, on an address others reach."""
    listening = settings.published_host or settings.host
    if settings.allow_open_writes or is_loopback(listening):
        return []
    ring = KeyRing(settings)
    ring.refresh()
    where = (f"EDURANKER_PUBLISHED_HOST={settings.published_host}" if settings.published_host
             else f"EDURANKER_HOST={settings.host or '(all interfaces)'}")
    return [f"{WRITES[role]} would be open to anyone who reaches {listening or 'this machine'} ({where}) "
            f"with no {role} key: give EDURANKER_{role.upper()}_KEYS (or a keys file, "
            "EDURANKER_API_KEYS_FILE), listen on loopback only (EDURANKER_HOST=127.0.0.1), or open it "
            "on purpose where only trusted callers reach it: EDURANKER_ALLOW_OPEN_WRITES=true"
            for role in writes if not ring.required(role)]


def start_problems(settings: Settings, writes: tuple[Role, ...]) -> list[str]:
    return placeholder_problems(settings) + open_write_problems(settings, writes)


def refuse(headline: str, problems: list[str]) -> NoReturn:
    """Exits with code 2, `headline` and one line a problem: what to change, no traceback."""
    print(f"error: {headline}:\n- " + "\n- ".join(problems), file=sys.stderr, flush=True)
    raise SystemExit(2)


def refuse_unsafe_start(settings: Settings, service: str, writes: tuple[Role, ...] = ()) -> None:
    """Exits with code 2 and what to set, before anything listens, when the start is unsafe."""
    problems = start_problems(settings, writes)
    if problems:
        refuse(f"the {service} refuses to start (docs/security.md)", problems)


def checked_start(service: str, writes: tuple[Role, ...] = ()) -> Settings:
    """A service's settings, checked before anything loads or listens: a value a setting cannot take,
    or an unsafe start, exits with code 2 and what to change."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        refuse(f"the {service} cannot start", exc.problems)
    refuse_unsafe_start(settings, service, writes)
    return settings
