"""`keystate processor|ingress|runtime`: run the partition processors, the ingress, or both."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keystate.schemas.errors import ContractError
from keystate.schemas.headers import DEFAULT_REDACT_HEADERS, REDACT_HEADERS_ENV, redact_headers
from keystate.schemas.limits import ENV_VAR, PayloadLimitError, max_payload_bytes
from keystate.schemas.topics import Topics
from keystate.server.address_policy import AddressPolicy
from keystate.server.errors import KafkaSettingsError, MetaError, ServerError
from keystate.server.identity import load_identity
from keystate.server.kafka import KafkaSettings
from keystate.server.tracing import OTLP_ENDPOINT_ENV, SERVICE_NAME_ENV, TracingSetupError, configure_export

from .kafka_flags import add_kafka_security_args, kafka_security

if TYPE_CHECKING:
    from keystate.ingress.auth import BearerToken

__all__ = ["IngressListen", "add_parsers", "ingress_listen"]

log = logging.getLogger("keystate.cli")

LOOPBACK = "127.0.0.1"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:19092)")
    parser.add_argument("--prefix", default=os.environ.get("KEYSTATE_TOPIC_PREFIX", "keystate."), help="topic name prefix")
    parser.add_argument(
        "--max-payload-bytes",
        help=f"largest request body, state value, ctx.run result, output or call argument in bytes; "
        f"give every processor and ingress the same (default ${ENV_VAR} or 8 MiB)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="directory of local state: the processors' partition stores and the admin's invocation read model; "
        "deleting it costs a re-read of the changelog (default $KEYSTATE_STATE_DIR, $XDG_STATE_HOME/keystate "
        "or ~/.local/state/keystate)",
    )
    parser.add_argument(
        "--redact-headers",
        default=None,
        help="comma-separated request headers never stored in Kafka nor forwarded to handlers, unless a service "
        f"asks for them with forward_headers; empty = none (default ${REDACT_HEADERS_ENV} or "
        f"{','.join(sorted(DEFAULT_REDACT_HEADERS))})",
    )
    parser.add_argument(
        "--deployment-allow",
        help="addresses of deployments the admin registers and the processors connect to: comma-separated classes "
        "(loopback, private, link-local, public) and CIDR ranges; leave loopback out in production "
        "(default $KEYSTATE_DEPLOYMENT_ALLOW or loopback,public)",
    )
    parser.add_argument(
        "--identity-key-file",
        type=Path,
        default=None,
        help="ed25519 private key (PKCS#8 PEM) that requests to deployments are signed with; give every processor "
        "and the admin the same one (default $KEYSTATE_IDENTITY_KEY_FILE, else <state dir>/identity.pem, "
        "generated at the first start)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export OpenTelemetry traces over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 "
        f"(/v1/traces is appended); needs pip install 'keystate[otel]' (default ${OTLP_ENDPOINT_ENV}; "
        f"unset: no export; service name ${SERVICE_NAME_ENV} or keystate-<command>)",
    )
    add_kafka_security_args(parser)


def _default(cls: type, name: str) -> Any:
    """A settings dataclass's own default, so the CLI never restates it."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default


def _processor_args(parser: argparse.ArgumentParser) -> None:
    from keystate.processors.invoker import InvokerSettings
    from keystate.processors.worker import ProcessorSettings

    parser.add_argument(
        "--instance-id",
        default=os.environ.get("KEYSTATE_INSTANCE_ID", "0"),
        help="stable id of this processor process; give each process its own (default %(default)s)",
    )
    parser.add_argument("--batch-max-records", type=int, default=_default(ProcessorSettings, "batch_max_records"),
                        help="records per transaction at most (default %(default)s)")
    parser.add_argument("--batch-linger-ms", type=float, default=_default(ProcessorSettings, "batch_linger_ms"),
                        help="wait this long to fill a batch (default %(default)s)")
    parser.add_argument("--retention", type=float, default=_default(ProcessorSettings, "completion_retention_ms") / 1000,
                        help="seconds a completed invocation stays answerable (default %(default)s)")
    parser.add_argument(
        "--fold-window-ms",
        type=float,
        default=float(os.environ.get("KEYSTATE_FOLD_WINDOW_MS", _default(ProcessorSettings, "fold_window_ms"))),
        help="a batch waits this long for the attempts it started to journal their first steps (a short "
        "handler's output) and commits them with it; 0: no waiting (default $KEYSTATE_FOLD_WINDOW_MS or "
        "%(default)s)",
    )
    parser.add_argument(
        "--pipeline-commits",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("KEYSTATE_PIPELINE_COMMITS", "0") == "1",
        help="apply the next batch while a transaction commits (default off; $KEYSTATE_PIPELINE_COMMITS=1: on)",
    )
    parser.add_argument(
        "--ingress-results",
        choices=("public", "private"),
        default=os.environ.get(
            "KEYSTATE_INGRESS_RESULTS", "public" if _default(ProcessorSettings, "publish_ingress_results") else "private"
        ),
        help="results of HTTP calls also go to the public results topic (public), or only to the waiting "
        "ingress's reply topic (private: one partition less per completing transaction) "
        "(default $KEYSTATE_INGRESS_RESULTS or %(default)s)",
    )
    parser.add_argument("--journal-retention", type=float,
                        default=_default(ProcessorSettings, "journal_retention_ms") / 1000,
                        help="seconds a completed invocation's journal stays readable; 0 deletes it at completion "
                        "(default %(default)s)")
    parser.add_argument("--inactivity-timeout", type=float, default=_default(InvokerSettings, "inactivity_timeout_s"),
                        help="seconds without any message from a deployment before an attempt is retried (default %(default)s)")
    parser.add_argument("--abort-timeout", type=float, default=_default(InvokerSettings, "abort_timeout_s"),
                        help="seconds an attempt may run at most (default %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=_default(InvokerSettings, "connect_timeout_s"),
                        help="seconds to open a connection to a deployment (default %(default)s)")
    parser.add_argument("--max-concurrent-attempts", type=int,
                        default=_default(InvokerSettings, "max_concurrent_attempts_per_deployment"),
                        help="attempts running against one deployment at once; more wait in a queue (default %(default)s)")
    parser.add_argument("--idle-connection-timeout", type=float,
                        default=_default(InvokerSettings, "idle_connection_timeout_s"),
                        help="seconds a WebSocket to a deployment stays open between attempts, for the next one "
                        "(warm connections; keep it below the SDK's idle_timeout of 60 s); 0: one WebSocket per "
                        "attempt (default %(default)s)")
    parser.add_argument("--max-queued-attempts", type=int, default=_default(InvokerSettings, "max_queued_attempts"),
                        help="waiting attempts above which log partitions are paused (default %(default)s)")
    parser.add_argument("--watchdog-stall", type=float, default=_default(ProcessorSettings, "watchdog_stall_s"),
                        help="seconds without a commit while records wait before the processor rejoins (default %(default)s)")
    parser.add_argument("--sweep-interval", type=float, default=_default(ProcessorSettings, "sweep_interval_s"),
                        help="seconds between sweeps for invocations left without a live attempt (default %(default)s)")
    parser.add_argument("--store-cache-rows", type=int, default=_default(ProcessorSettings, "store_cache_rows"),
                        help="decoded rows kept in memory per partition (default %(default)s)")
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("KEYSTATE_METRICS_ADDRESS"),
        help="HOST:PORT of the processor's Prometheus GET /metrics (port 0: a free port, logged), or off "
        "(default $KEYSTATE_METRICS_ADDRESS, else 127.0.0.1:(9170 + N) for a numeric --instance-id N and a free "
        "port otherwise; `keystate runtime`: off, its admin API's /metrics serves the same process's metrics)",
    )
    parser.add_argument("--store-block-cache-mb", type=int,
                        default=_default(ProcessorSettings, "store_block_cache_bytes") >> 20,
                        help="RocksDB block cache of the process, MiB (default %(default)s)")


def _ingress_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingress-host", help=f"address the ingress listens on (default {LOOPBACK})")
    parser.add_argument("--port", type=int, default=8080, help="ingress port (default %(default)s)")
    parser.add_argument("--admin-host", help=f"address the admin API listens on (default {LOOPBACK})")
    parser.add_argument("--admin-port", type=int, default=9070, help="admin API port (default %(default)s)")
    parser.add_argument("--host", help="deprecated: sets both --ingress-host and --admin-host")
    parser.add_argument(
        "--ingress-id",
        default=os.environ.get("KEYSTATE_INGRESS_ID", ""),
        help="names this ingress's reply topic <prefix>replies.<id>; give each ingress its own, stable across "
        "restarts (default $KEYSTATE_INGRESS_ID, else derived from the host name and the state directory)",
    )
    parser.add_argument(
        "--ingress-token-file",
        type=Path,
        help="file holding the token callers of the ingress must send as 'Authorization: Bearer <token>' "
        "(default $KEYSTATE_INGRESS_TOKEN; neither: no authentication, allowed on loopback only)",
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the token callers of the admin API must send as 'Authorization: Bearer <token>' "
        "(default $KEYSTATE_ADMIN_TOKEN; neither: no authentication, allowed on loopback only)",
    )
    parser.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow a non-loopback --ingress-host/--admin-host without a token: anyone who can reach it can use it",
    )


@dataclass(frozen=True, slots=True)
class IngressListen:
    """Where the ingress and the admin API listen, and the tokens they require (None: none)."""

    ingress_host: str
    admin_host: str
    ingress_token: BearerToken | None
    admin_token: BearerToken | None
    insecure: bool


def ingress_listen(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> IngressListen:
    """The listeners of `args`: hosts (with the deprecated --host), tokens, and the refusal to listen in the open.

    Raises `AuthSetupError` for an unusable token or a non-loopback listener without one (and no --insecure-listen).
    """
    from keystate.ingress.auth import ADMIN, INGRESS, AuthSetupError, listen_refusal, load_token

    if args.host is not None:
        log.warning("--host is deprecated: it sets both --ingress-host and --admin-host, so exposing the ingress "
                    "exposes the admin API too; use those two instead")
    ingress_host = next(h for h in (args.ingress_host, args.host, LOOPBACK) if h is not None)
    admin_host = next(h for h in (args.admin_host, args.host, LOOPBACK) if h is not None)
    ingress_token = load_token(INGRESS, args.ingress_token_file, environ)
    admin_token = load_token(ADMIN, args.admin_token_file, environ)
    if not args.insecure_listen:
        # Refused here, before any Kafka client starts; run_ingress checks again and warns when insecure.
        refusals = [
            str(refusal)
            for listener, host, token in ((INGRESS, ingress_host, ingress_token), (ADMIN, admin_host, admin_token))
            if (refusal := listen_refusal(listener, host, token)) is not None
        ]
        if refusals:
            raise AuthSetupError("\n".join(refusals))
    return IngressListen(ingress_host, admin_host, ingress_token, admin_token, args.insecure_listen)


def add_parsers(sub: Any, bootstrap: Callable[[argparse.Namespace], str]) -> None:
    proc = sub.add_parser("processor", help="run partition processors (joins the processor group)")
    _common(proc)
    _processor_args(proc)
    proc.set_defaults(run=lambda a: _run(a, bootstrap(a), processor=True, ingress=False))

    ing = sub.add_parser("ingress", help="run the HTTP ingress and admin API")
    _common(ing)
    _ingress_args(ing)
    ing.set_defaults(run=lambda a: _run(a, bootstrap(a), processor=False, ingress=True))

    both = sub.add_parser("runtime", help="run processors, ingress and admin API in one process")
    _common(both)
    _processor_args(both)
    _ingress_args(both)
    both.set_defaults(run=lambda a: _run(a, bootstrap(a), processor=True, ingress=True))


def _run(args: argparse.Namespace, bootstrap: str, *, processor: bool, ingress: bool) -> int:
    try:
        args.max_payload_bytes = max_payload_bytes(args.max_payload_bytes)
        args.redact_headers = redact_headers(args.redact_headers)
        args.kafka_security = kafka_security(args)
        args.deployment_allow = (
            AddressPolicy.from_env() if args.deployment_allow is None else AddressPolicy.parse(args.deployment_allow)
        )
    except (PayloadLimitError, ContractError, KafkaSettingsError, MetaError) as exc:
        log.error("%s", exc)
        return 2
    if processor and args.ingress_results not in ("public", "private"):
        log.error("--ingress-results ($KEYSTATE_INGRESS_RESULTS) must be public or private, not %r", args.ingress_results)
        return 2
    if processor:
        from keystate.processors.metrics import default_metrics_address, parse_metrics_address

        try:
            if args.metrics_address is not None:
                args.metrics_address = parse_metrics_address(args.metrics_address)
            elif not ingress:  # a runtime's admin API serves the same registry at /metrics
                args.metrics_address = default_metrics_address(args.instance_id)
        except ServerError as exc:
            log.error("%s", exc)
            return 2
    try:
        tracer_provider = configure_export(args.otlp_endpoint, _service_name(processor=processor, ingress=ingress))
    except TracingSetupError as exc:
        log.error("%s", exc)
        return 2
    try:
        return _serve(args, bootstrap, processor=processor, ingress=ingress)
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still queued


def _service_name(*, processor: bool, ingress: bool) -> str:
    """The default OpenTelemetry service name of the command."""
    return "keystate" if processor and ingress else "keystate-processor" if processor else "keystate-ingress"


def _serve(args: argparse.Namespace, bootstrap: str, *, processor: bool, ingress: bool) -> int:
    from keystate.processors.errors import ProcessorError

    listen = None
    if ingress:
        from keystate.ingress.auth import AuthSetupError

        from keystate.ingress.errors import IngressError
        from keystate.ingress.runtime import check_ingress_id

        try:
            listen = ingress_listen(args)
            if args.ingress_id:
                check_ingress_id(args.ingress_id)
        except (AuthSetupError, IngressError) as exc:
            log.error("%s", exc)
            return 2
    try:
        asyncio.run(_main(args, bootstrap, processor=processor, listen=listen))
    except (ServerError, ProcessorError) as exc:
        log.error("%s", exc)
        return 1
    return 0


async def _main(args: argparse.Namespace, bootstrap: str, *, processor: bool, listen: IngressListen | None) -> None:
    topics = Topics(args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    metrics_server = None
    # One key for the process: the processor signs attempts with it, the admin discovery requests.
    identity = await asyncio.to_thread(load_identity, args.identity_key_file, args.state_dir)
    if not processor:  # a processor logs it as its invoker starts
        log.info("discovery requests are signed with the identity key %s (%s)", identity.public_key, identity.path)
    if processor:
        from keystate.processors.invoker import InvokerSettings
        from keystate.processors.worker import ProcessorSettings, Worker

        settings = ProcessorSettings(
            kafka=KafkaSettings(
                bootstrap,
                topics,
                client_id=f"keystate-processor-{args.instance_id}",
                max_payload_bytes=args.max_payload_bytes,
                security=args.kafka_security,
            ),
            instance_id=args.instance_id,
            batch_max_records=args.batch_max_records,
            batch_linger_ms=args.batch_linger_ms,
            fold_window_ms=args.fold_window_ms,
            pipeline_commits=args.pipeline_commits,
            completion_retention_ms=int(args.retention * 1000),
            publish_ingress_results=args.ingress_results == "public",
            journal_retention_ms=int(args.journal_retention * 1000),
            watchdog_stall_s=args.watchdog_stall,
            sweep_interval_s=args.sweep_interval,
            state_dir=args.state_dir,
            store_cache_rows=args.store_cache_rows,
            store_block_cache_bytes=args.store_block_cache_mb << 20,
            invoker=InvokerSettings(
                inactivity_timeout_s=args.inactivity_timeout,
                abort_timeout_s=args.abort_timeout,
                connect_timeout_s=args.connect_timeout,
                max_payload_bytes=args.max_payload_bytes,
                max_concurrent_attempts_per_deployment=args.max_concurrent_attempts,
                max_queued_attempts=args.max_queued_attempts,
                idle_connection_timeout_s=args.idle_connection_timeout,
                identity=identity,
                deployment_allow=args.deployment_allow,
            ),
            redact_headers=args.redact_headers,
        )
        if args.metrics_address is not None:
            from keystate.processors.metrics import start_metrics_server

            metrics_server = start_metrics_server(args.metrics_address)
        tasks.append(asyncio.create_task(Worker(settings).run(stop), name="processor"))
    if listen is not None:
        from keystate.ingress.runtime import IngressSettings, default_state_dir, run_ingress

        ingress_settings = IngressSettings(
            bootstrap=bootstrap,
            topics=topics,
            max_payload_bytes=args.max_payload_bytes,
            ingress_token=listen.ingress_token,
            admin_token=listen.admin_token,
            redact_headers=args.redact_headers,
            identity=identity,
            kafka_security=args.kafka_security,
            deployment_allow=args.deployment_allow,
            ingress_id=args.ingress_id,
            # Given here, not replaced after: the default ingress id is derived from it.
            state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        )
        serve = run_ingress(
            ingress_settings,
            listen.ingress_host,
            args.port,
            args.admin_port,
            admin_host=listen.admin_host,
            insecure_listen=listen.insecure,
        )
        tasks.append(asyncio.create_task(serve, name="ingress"))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for task in tasks:
        if not task.done() and task.get_name() == "ingress":
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    if metrics_server is not None:
        metrics_server.stop()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
