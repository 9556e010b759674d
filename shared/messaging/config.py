"""How every Kafka client reaches the brokers: addresses, timeouts, TLS and SASL, derived once from
`Settings` (`kafka_connection`) and spelled for each client family that reads them: aiokafka (the
services' producers and consumers), Faust (the aggregator) and kafka-python (topic administration).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from shared.settings import Settings

SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
SSL_PROTOCOLS = ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class GroupTimeouts:
    """Short consumer-group timeouts: the embedded broker holds a group's first join for the whole
    rebalance timeout, so the clients' long defaults mean 20 s+ start-ups."""

    session_s: float = 6.0
    heartbeat_s: float = 1.0
    rebalance_s: float = 10.0
    max_poll_s: float = 10.0  # a member that does not poll for this long leaves the group


GROUP_TIMEOUTS = GroupTimeouts()


@dataclass(frozen=True)
class SaslLogin:
    mechanism: str
    username: str
    password: SecretStr  # its repr hides the value


@dataclass(frozen=True)
class TlsFiles:
    cafile: Path | None = None  # None: the system CAs
    certfile: Path | None = None  # client certificate (mutual TLS)
    keyfile: Path | None = None
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """The TLS context for the clients that take one (aiokafka, Faust): CA, certificate, hostname."""
        context = ssl.create_default_context(cafile=str(self.cafile) if self.cafile else None)
        if self.certfile:
            context.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
        context.check_hostname = self.check_hostname
        return context


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to authenticate, the same for every client of every service."""

    bootstrap: tuple[str, ...]
    timeout_s: float
    protocol: str = "PLAINTEXT"
    sasl: SaslLogin | None = None
    tls: TlsFiles | None = None
    group: GroupTimeouts = GROUP_TIMEOUTS

    def security(self) -> dict[str, Any]:
        """The security options as kafka-python names them (PLAINTEXT, SSL, SASL PLAIN or SCRAM)."""
        config: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            config |= {"sasl_mechanism": self.sasl.mechanism, "sasl_plain_username": self.sasl.username,
                       "sasl_plain_password": self.sasl.password.get_secret_value()}
        if self.tls:
            config |= {
                "ssl_check_hostname": self.tls.check_hostname,
                "ssl_cafile": str(self.tls.cafile) if self.tls.cafile else None,
                "ssl_certfile": str(self.tls.certfile) if self.tls.certfile else None,
                "ssl_keyfile": str(self.tls.keyfile) if self.tls.keyfile else None,
            }
        return config

    def kafka_python(self) -> dict[str, Any]:
        """Options for a kafka-python client (`KafkaAdminClient`, `KafkaConsumer`)."""
        return {"bootstrap_servers": list(self.bootstrap), "request_timeout_ms": int(self.timeout_s * 1000),
                **self.security()}

    def aiokafka(self) -> dict[str, Any]:
        """Options for an aiokafka client; SASL has kafka-python's names, TLS is a context."""
        config: dict[str, Any] = {"bootstrap_servers": list(self.bootstrap),
                                  "request_timeout_ms": int(self.timeout_s * 1000),
                                  "security_protocol": self.protocol}
        if self.sasl:
            config |= {"sasl_mechanism": self.sasl.mechanism, "sasl_plain_username": self.sasl.username,
                       "sasl_plain_password": self.sasl.password.get_secret_value()}
        if self.tls:
            config["ssl_context"] = self.tls.context()
        return config

    def aiokafka_group(self) -> dict[str, Any]:
        """A consumer-group member's timeouts, as aiokafka names them."""
        return {"session_timeout_ms": int(self.group.session_s * 1000),
                "heartbeat_interval_ms": int(self.group.heartbeat_s * 1000),
                "rebalance_timeout_ms": int(self.group.rebalance_s * 1000),
                "max_poll_interval_ms": int(self.group.max_poll_s * 1000)}

    def faust_credentials(self) -> Any:
        """The security settings as Faust's `broker_credentials` (None: plaintext)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.sasl:
            return SASLCredentials(username=self.sasl.username,
                                   password=self.sasl.password.get_secret_value(),
                                   mechanism=self.sasl.mechanism,
                                   ssl_context=self.tls.context() if self.tls else None)
        if self.tls:
            return SSLCredentials(self.tls.context())
        return None

    def faust(self) -> dict[str, Any]:
        """`faust.App` options: the brokers, the credentials and the group timeouts."""
        return {"broker": [f"kafka://{b}" for b in self.bootstrap],
                "broker_credentials": self.faust_credentials(),
                "broker_session_timeout": self.group.session_s,
                "broker_heartbeat_interval": self.group.heartbeat_s,
                "broker_rebalance_timeout": self.group.rebalance_s,
                "broker_max_poll_interval": self.group.max_poll_s}


def kafka_connection(settings: Settings) -> KafkaConnection:
    """The `EDURANKER_KAFKA_*` settings, checked: SASL without a user is refused with what to set."""
    protocol = settings.kafka_security_protocol
    sasl = tls = None
    if protocol in SASL_PROTOCOLS:
        if not settings.kafka_sasl_username:
            raise ValueError(f"EDURANKER_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                             "EDURANKER_KAFKA_SASL_USERNAME and EDURANKER_KAFKA_SASL_PASSWORD")
        sasl = SaslLogin(settings.kafka_sasl_mechanism, settings.kafka_sasl_username,
                         settings.kafka_sasl_password)
    if protocol in SSL_PROTOCOLS:
        tls = TlsFiles(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile,
                       settings.kafka_ssl_check_hostname)
    return KafkaConnection(bootstrap=tuple(b.strip() for b in settings.kafka_bootstrap.split(",")),
                           timeout_s=settings.kafka_timeout_s, protocol=protocol, sasl=sasl, tls=tls)
