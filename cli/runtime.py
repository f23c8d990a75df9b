"""`keystate processor|ingress|runtime`: run the partition processors, the ingress, or both."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path
from collections.abc import Callable
from typing import Any

from keystate.schemas.limits import ENV_VAR, PayloadLimitError, max_payload_bytes
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaSettingsError, ServerError
from keystate.server.kafka import KafkaSettings

from .kafka_flags import add_kafka_security_args, kafka_security

__all__ = ["add_parsers"]

log = logging.getLogger("keystate.cli")


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
    parser.add_argument("--inactivity-timeout", type=float, default=_default(InvokerSettings, "inactivity_timeout_s"),
                        help="seconds without any message from a deployment before an attempt is retried (default %(default)s)")
    parser.add_argument("--abort-timeout", type=float, default=_default(InvokerSettings, "abort_timeout_s"),
                        help="seconds an attempt may run at most (default %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=_default(InvokerSettings, "connect_timeout_s"),
                        help="seconds to open a connection to a deployment (default %(default)s)")
    parser.add_argument("--max-concurrent-attempts", type=int,
                        default=_default(InvokerSettings, "max_concurrent_attempts_per_deployment"),
                        help="attempts running against one deployment at once; more wait in a queue (default %(default)s)")
    parser.add_argument("--max-queued-attempts", type=int, default=_default(InvokerSettings, "max_queued_attempts"),
                        help="waiting attempts above which log partitions are paused (default %(default)s)")
    parser.add_argument("--watchdog-stall", type=float, default=_default(ProcessorSettings, "watchdog_stall_s"),
                        help="seconds without a commit while records wait before the processor rejoins (default %(default)s)")
    parser.add_argument("--sweep-interval", type=float, default=_default(ProcessorSettings, "sweep_interval_s"),
                        help="seconds between sweeps for invocations left without a live attempt (default %(default)s)")
    parser.add_argument("--store-cache-rows", type=int, default=_default(ProcessorSettings, "store_cache_rows"),
                        help="decoded rows kept in memory per partition (default %(default)s)")
    parser.add_argument("--store-block-cache-mb", type=int,
                        default=_default(ProcessorSettings, "store_block_cache_bytes") >> 20,
                        help="RocksDB block cache of the process, MiB (default %(default)s)")


def _ingress_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="ingress port (default %(default)s)")
    parser.add_argument("--admin-port", type=int, default=9070, help="admin API port (default %(default)s)")
    parser.add_argument(
        "--deployment-allow",
        help="addresses deployments may be registered at: comma-separated classes (loopback, private, link-local, "
        "public) and CIDR ranges; leave loopback out in production (default $KEYSTATE_DEPLOYMENT_ALLOW or loopback,public)",
    )


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
    from keystate.processors.errors import ProcessorError

    try:
        args.max_payload_bytes = max_payload_bytes(args.max_payload_bytes)
        args.kafka_security = kafka_security(args)
    except (PayloadLimitError, KafkaSettingsError) as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(_main(args, bootstrap, processor=processor, ingress=ingress))
    except (ServerError, ProcessorError) as exc:
        log.error("%s", exc)
        return 1
    return 0


async def _main(args: argparse.Namespace, bootstrap: str, *, processor: bool, ingress: bool) -> None:
    topics = Topics(args.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
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
            completion_retention_ms=int(args.retention * 1000),
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
            ),
        )
        tasks.append(asyncio.create_task(Worker(settings).run(stop), name="processor"))
    if ingress:
        from keystate.ingress.runtime import IngressSettings, run_ingress

        ingress_settings = IngressSettings(
            bootstrap=bootstrap, topics=topics, max_payload_bytes=args.max_payload_bytes, kafka_security=args.kafka_security
        )
        if args.deployment_allow is not None:
            from keystate.server.address_policy import AddressPolicy

            ingress_settings = dataclasses.replace(ingress_settings, deployment_allow=AddressPolicy.parse(args.deployment_allow))
        if args.state_dir:
            ingress_settings = dataclasses.replace(ingress_settings, state_dir=Path(args.state_dir))
        tasks.append(
            asyncio.create_task(run_ingress(ingress_settings, args.host, args.port, args.admin_port), name="ingress")
        )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for task in tasks:
        if not task.done() and task.get_name() == "ingress":
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
