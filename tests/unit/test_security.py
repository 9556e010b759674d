"""Security settings reach the clients, the key ring's rules, no pickle, a non-root image."""

from __future__ import annotations

import inspect
import re
import ssl
from pathlib import Path

import certifi
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import HTTPException
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from shared.messaging.config import kafka_connection
from shared.settings import Settings
from shared.store import make_store
from shared.store.mongo import MongoStore
from shared.web.auth import KeyRing, KeysFileError, parse_keys_file

ROOT = Path(__file__).resolve().parent.parent.parent
CA = Path(certifi.where())  # a real CA bundle: the TLS contexts below really load it


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert kafka_connection(Settings()).security() == {"security_protocol": "PLAINTEXT"}
    assert kafka_connection(Settings()).faust_credentials() is None


def test_sasl_scram_over_tls_reaches_aiokafka_faust_and_kafka_python() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                        kafka_sasl_username="svc", kafka_sasl_password="s3cret", kafka_ssl_cafile=CA)
    connection = kafka_connection(settings)
    config = connection.security()
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "svc" and config["sasl_plain_password"] == "s3cret"
    assert config["ssl_cafile"] == str(CA) and config["ssl_check_hostname"] is True
    # Every kafka-python client is built from `kafka_python()`, which carries these options.
    assert set(config) <= set(KafkaProducer.DEFAULT_CONFIG) & set(KafkaConsumer.DEFAULT_CONFIG) & set(
        KafkaAdminClient.DEFAULT_CONFIG)
    assert set(connection.kafka_python()) <= set(KafkaConsumer.DEFAULT_CONFIG) & set(
        KafkaAdminClient.DEFAULT_CONFIG)
    # Every aiokafka producer and consumer is built from `aiokafka()`: the same login, TLS as a context.
    options = connection.aiokafka()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc" and options["sasl_plain_password"] == "s3cret"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED and options["ssl_context"].check_hostname
    accepted = set(inspect.signature(AIOKafkaProducer).parameters) & set(
        inspect.signature(AIOKafkaConsumer).parameters)
    assert set(options) <= accepted
    assert set(connection.aiokafka_group()) <= set(inspect.signature(AIOKafkaConsumer).parameters)
    credentials = connection.faust_credentials()
    assert credentials.username == "svc" and credentials.password == "s3cret"  # type: ignore[attr-defined]
    assert credentials.mechanism.value == "SCRAM-SHA-512"  # type: ignore[attr-defined]
    assert credentials.protocol.value == "SASL_SSL"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(credentials)
    assert "s3cret" not in repr(connection)


def test_sasl_without_a_user_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="EDURANKER_KAFKA_SASL_USERNAME"):
        kafka_connection(Settings(kafka_security_protocol="SASL_PLAINTEXT"))


def test_ssl_context_loads_the_ca_and_follows_the_hostname_setting() -> None:
    tls_files = kafka_connection(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA,
                                          kafka_ssl_check_hostname=False)).tls
    assert tls_files is not None
    context = tls_files.context()
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
    tls = kafka_connection(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA)).faust_credentials()
    assert tls.protocol.value == "SSL"  # type: ignore[union-attr]


def test_the_mongo_ca_file_reaches_the_client() -> None:
    from pymongo import AsyncMongoClient

    store = MongoStore("mongodb://user:pw@db.example:27017/eduranker?authSource=admin", tls_ca_file=CA)
    options = store.client_options()
    assert options["tls"] is True and options["tlsCAFile"] == str(CA)
    client = AsyncMongoClient(store.url, connect=False, **options)  # builds the TLS context, no I/O
    assert client.options.pool_options._ssl_context is not None
    assert "tls" not in MongoStore("mongodb://db:27017/eduranker").client_options()
    # What a service is given reaches MongoDB (store_from(settings) builds it so), not the environment.
    configured = make_store("mongodb://db:27017/eduranker", Settings(mongo_tls_ca_file=CA).mongo_tls_ca_file)
    assert isinstance(configured, MongoStore) and configured.client_options()["tlsCAFile"] == str(CA)


def test_keys_files_in_both_formats() -> None:
    assert parse_keys_file('{"admin": ["a1", "a2"], "feedback": "f1, f2"}') == {
        "admin": ["a1", "a2"], "feedback": ["f1", "f2"], "search": []}
    assert parse_keys_file("# comment\nadmin a1\n\nsearch s1  # trailing\n")["search"] == ["s1"]
    with pytest.raises(KeysFileError, match="line 1") as refused:
        parse_keys_file("superuser secret-value")
    assert "secret-value" not in str(refused.value)
    with pytest.raises(KeysFileError, match="unknown role"):
        parse_keys_file('{"root": ["k"]}')


def status(ring: KeyRing, role: str, key: str | None) -> int:
    try:
        ring.check(role, key)  # type: ignore[arg-type]
    except HTTPException as exc:
        return exc.status_code
    return 200


def test_roles_open_until_keyed_and_search_by_setting() -> None:
    open_ring = KeyRing(Settings())
    assert [status(open_ring, role, None) for role in ("admin", "feedback", "search")] == [200, 200, 200]
    ring = KeyRing(Settings(admin_keys="adm", feedback_keys="fb", search_keys="se", search_requires_key=True))
    assert status(ring, "search", None) == 401 and status(ring, "search", "nope") == 403
    assert [status(ring, "search", k) for k in ("se", "fb", "adm")] == [200, 200, 200]
    assert [status(ring, "feedback", k) for k in ("se", "fb", "adm")] == [403, 200, 200]
    assert [status(ring, "admin", k) for k in ("se", "fb", "adm")] == [403, 403, 200]
    admin_only = KeyRing(Settings(admin_keys="adm"))
    assert status(admin_only, "feedback", None) == 200 and status(admin_only, "admin", None) == 401


def test_an_unreadable_keys_file_refuses_instead_of_opening(tmp_path: Path) -> None:
    ring = KeyRing(Settings(api_keys_file=tmp_path / "missing"))
    assert status(ring, "feedback", "anything") == 503
    assert status(ring, "search", None) == 200  # search stays open unless required
    (tmp_path / "missing").write_text("feedback fb\n")
    assert status(ring, "feedback", "fb") == 200 and status(ring, "feedback", None) == 401


SOURCES = [p for d in ("shared", "services", "bench", "notebooks") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".ipynb")]


@pytest.mark.parametrize("pattern", [r"\bimport pickle\b|\bpickle\.loads?\(|\bdill\b|joblib\.load",
                                     r"torch\.load\((?![^)]*weights_only=True)", r"allow_pickle=True",
                                     r"\.from_pretrained\([^)]*use_safetensors=False"])
def test_no_code_path_loads_pickle(pattern: str) -> None:
    assert SOURCES, "the sources were not found"
    found = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if re.search(pattern, line)]
    assert not found, f"pickle can run code from a file someone else wrote: {found}"


def test_the_image_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "deploy" / "docker" / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile sets no USER: the services would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
