"""`IngressRuntime`: the producer, meta view, result waiter and limits shared by the ingress and admin apps."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from keystate.schemas.headers import redact_headers
from keystate.schemas.limits import max_payload_bytes
from keystate.schemas.topics import Topics
from keystate.server.address_policy import AddressPolicy
from keystate.server.identity import RequestIdentity, signing_middleware
from keystate.server.kafka import AsyncProducer, KafkaSecurity, KafkaSettings
from keystate.server.meta import MetaView
from keystate.server.state_dir import STATE_DIR_ENV, default_state_dir
from keystate.server.topics import check_record_limits, create_reply_topic

from .auth import ADMIN, INGRESS, BearerToken, check_listen
from .errors import IngressError, Unavailable
from .http_limits import HttpLimits, parser_options
from .readmodel import InvocationReadModel
from .readmodel_sql import query_max_rows, query_timeout
from .results import ResultWaiter

__all__ = [
    "INGRESS_ID_ENV",
    "STATE_DIR_ENV",
    "IngressRuntime",
    "IngressSettings",
    "check_ingress_id",
    "default_ingress_id",
    "default_state_dir",
    "run_ingress",
]

log = logging.getLogger(__name__)

INGRESS_ID_ENV = "KEYSTATE_INGRESS_ID"
_INGRESS_ID = re.compile(r"[a-zA-Z0-9_-]{1,100}")


def check_ingress_id(ingress_id: str) -> str:
    """`ingress_id` if it can name a reply topic; else IngressError saying what may be used."""
    if not _INGRESS_ID.fullmatch(ingress_id):
        raise IngressError(
            f"ingress id {ingress_id[:60]!r} cannot name a topic: use 1 to 100 ASCII letters, digits, '_' "
            f"or '-' (--ingress-id or ${INGRESS_ID_ENV})"
        )
    return ingress_id


def default_ingress_id(state_dir: Path | None = None) -> str:
    """`$KEYSTATE_INGRESS_ID`, else `<host name>-<hash of the state dir>`: names the reply topic `<prefix>replies.<id>`.

    Stable across restarts, so a restarted ingress reuses its reply topic instead of leaving one behind
    per start; one ingress per state dir is already the rule (its read model lives there).
    """
    configured = os.environ.get(INGRESS_ID_ENV)
    if configured:
        return configured
    where = str((state_dir or default_state_dir()).resolve())
    host = re.sub(r"[^a-zA-Z0-9_-]+", "-", socket.gethostname())[:60].strip("-") or "ingress"
    return f"{host}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"

@dataclass(frozen=True, slots=True)
class IngressSettings:
    """Where Kafka is and every limit of the ingress, explicit and configurable."""

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    # One request body with its headers at most (keystate.schemas.limits; $KEYSTATE_MAX_PAYLOAD_BYTES).
    max_payload_bytes: int = field(default_factory=max_payload_bytes)
    # Path plus query, and all request headers together; over them: JSON 414 / 431.
    max_url_bytes: int = 64 * 1024
    max_header_bytes: int = 64 * 1024
    call_timeout: float = 300.0
    max_pending_calls: int = 10_000
    produce_timeout: float = 30.0
    discovery_timeout: float = 10.0
    # SASL/TLS of the Kafka clients (default: the KAFKA_* environment, else PLAINTEXT).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity.from_env)
    # Addresses POST /deployments may connect to ($KEYSTATE_DEPLOYMENT_ALLOW; default loopback,public).
    deployment_allow: AddressPolicy = field(default_factory=AddressPolicy.from_env)
    register_timeout: float = 30.0
    start_timeout: float = 30.0
    # Where the ingress keeps local state (the admin's invocation read model); losing it costs a re-read.
    state_dir: Path = field(default_factory=default_state_dir)
    # Bearer tokens callers must send (ingress.auth); None: that listener needs none (loopback only).
    ingress_token: BearerToken | None = None
    admin_token: BearerToken | None = None
    # Secret headers never stored nor forwarded (keystate.schemas.headers; $KEYSTATE_REDACT_HEADERS).
    redact_headers: frozenset[str] = field(default_factory=redact_headers)
    # The key the admin signs discovery requests with and serves at GET /identity (the processors'
    # key: see keystate.server.identity); None: discovery is unsigned.
    identity: RequestIdentity | None = None
    # Names the reply topic (`<prefix>replies.<ingress_id>`) the processors answer this ingress on
    # ($KEYSTATE_INGRESS_ID; "" = `default_ingress_id(state_dir)`, stable across restarts).
    ingress_id: str = ""
    # POST :9070/query: seconds a query may run, rows it answers at most
    # ($KEYSTATE_QUERY_TIMEOUT, default 30; $KEYSTATE_QUERY_MAX_ROWS, default 10000).
    query_timeout: float = field(default_factory=query_timeout)
    query_max_rows: int = field(default_factory=query_max_rows)

    def __post_init__(self) -> None:
        max_payload_bytes(self.max_payload_bytes)  # raises PayloadLimitError out of range
        if not self.ingress_id:
            object.__setattr__(self, "ingress_id", default_ingress_id(Path(self.state_dir)))
        check_ingress_id(self.ingress_id)

    @property
    def reply_topic(self) -> str:
        """Where the processors send this ingress its replies and the results it waits for."""
        return self.topics.replies(self.ingress_id)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: the payload limit."""
        return self.max_payload_bytes

    @property
    def http_limits(self) -> HttpLimits:
        return HttpLimits(self.max_url_bytes, self.max_header_bytes)

    @property
    def readmodel_path(self) -> Path:
        """`<state_dir>/<prefix>ingress-<hash of bootstrap>/readmodel.duckdb`: one file per cluster and prefix."""
        cluster = hashlib.sha256(self.bootstrap.encode()).hexdigest()[:12]
        return Path(self.state_dir) / f"{self.topics.prefix}ingress-{cluster}" / "readmodel.duckdb"

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            self.bootstrap,
            self.topics,
            client_id="keystate-ingress",
            max_payload_bytes=self.max_payload_bytes,
            security=self.kafka_security,
        )


class IngressRuntime:
    """Owns the Kafka clients and views the HTTP apps use; `start` before serving, `stop` after."""

    def __init__(self, settings: IngressSettings) -> None:
        self.settings = settings
        self.producer: AsyncProducer | None = None
        self.meta = MetaView(settings.kafka)
        self.results = ResultWaiter(settings.kafka, settings.reply_topic, max_pending=settings.max_pending_calls)
        self.invocations = InvocationReadModel(settings.kafka, settings.readmodel_path)
        self.log_partitions = 0
        self.http: aiohttp.ClientSession | None = None

    @property
    def ready(self) -> bool:
        return self.meta.ready and self.results.ready and self.producer is not None

    async def start(self) -> None:
        """Connect to Kafka, read keystate.meta to its end, follow the results, start the invocation read model."""
        self.producer = AsyncProducer(self.settings.kafka)
        try:
            self.log_partitions = await asyncio.to_thread(self.producer.partitions, self.settings.topics.log)
            # A body the topics cannot take would be accepted here and refused by the broker.
            await asyncio.to_thread(
                check_record_limits,
                self.settings.bootstrap,
                self.settings.topics,
                self.settings.max_payload_bytes,
                timeout=self.settings.start_timeout,
                security=self.settings.kafka_security,
            )
            await asyncio.to_thread(
                create_reply_topic,
                self.settings.bootstrap,
                self.settings.topics,
                self.settings.ingress_id,
                self.settings.max_payload_bytes,
                timeout=self.settings.start_timeout,
                security=self.settings.kafka_security,
            )
            # Both followers must be reading before the first request can be accepted.
            await asyncio.gather(
                self.meta.start(self.settings.start_timeout), self.results.start(self.settings.start_timeout)
            )
            # The read model serves only the admin API: it catches up in the background.
            await self.invocations.start()
        except BaseException:
            await self.stop()
            raise
        identity = self.settings.identity
        self.http = aiohttp.ClientSession(middlewares=(signing_middleware(identity),) if identity is not None else ())

    async def stop(self) -> None:
        self.meta.stop()
        self.results.stop()
        await self.invocations.stop()
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.producer is not None:
            producer, self.producer = self.producer, None
            await asyncio.to_thread(producer.close)

    @property
    def reply_topic(self) -> str:
        """The `reply_topic` of every command this ingress waits on (see `ResultWaiter`)."""
        return self.settings.reply_topic

    def require_producer(self) -> AsyncProducer:
        if self.producer is None:
            raise Unavailable("the ingress is not connected to Kafka yet; retry in a moment")
        return self.producer


async def run_ingress(
    settings: IngressSettings,
    ingress_host: str = "127.0.0.1",
    port: int = 8080,
    admin_port: int = 9070,
    *,
    admin_host: str = "127.0.0.1",
    insecure_listen: bool = False,
) -> None:
    """Serve the ingress on `ingress_host:port` and the admin API on `admin_host:admin_port` until cancelled.

    A listener on a non-loopback host needs its token in `settings`, unless `insecure_listen`
    (`AuthSetupError` otherwise, raised before connecting to Kafka).
    """
    from .admin import admin_app
    from .app import ingress_app

    check_listen(INGRESS, ingress_host, settings.ingress_token, insecure=insecure_listen)
    check_listen(ADMIN, admin_host, settings.admin_token, insecure=insecure_listen)
    runtime = IngressRuntime(settings)
    await runtime.start()
    runners: list[web.AppRunner] = []
    try:
        listeners = ((ingress_app(runtime), ingress_host, port), (admin_app(runtime), admin_host, admin_port))
        for app, host, app_port in listeners:
            runner = web.AppRunner(app, access_log=None, **parser_options(settings.http_limits))
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, app_port).start()
        log.info(
            "ingress on http://%s:%d (%s), admin API on http://%s:%d (%s)",
            ingress_host, port, _auth_text(settings.ingress_token),
            admin_host, admin_port, _auth_text(settings.admin_token),
        )
        await asyncio.Event().wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await runtime.stop()


def _auth_text(token: BearerToken | None) -> str:
    return "no authentication" if token is None else f"bearer token from {token.source}"
