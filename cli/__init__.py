"""The `keystate` command line: local Kafka, topics, processors, ingress, and the admin API's groups."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

__all__ = ["main"]

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
# The groups that talk to the admin API: name -> (module, help). Each module's main parses the rest.
_ADMIN_GROUPS = {
    "deployments": ("deployments", "register|list|describe|remove deployments via the admin API"),
    "invocations": (
        "invocations", "list|describe|cancel|kill|purge|pause|resume|restart-as-new invocations, one or in bulk"
    ),
    "services": ("services", "list|describe services, view or change their settings (config view|patch)"),
    "state": ("state", "get|edit|clear the state of a virtual object or workflow"),
    "sql": ("sql", "read-only SQL over sys_invocation, sys_journal, state, ... through the admin API"),
}


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def _topics(args: argparse.Namespace) -> int:
    from keystate.server.errors import ServerError
    from keystate.schemas.limits import PayloadLimitError, max_payload_bytes
    from keystate.server.topics import TopicSettings, ensure_topics
    from keystate.schemas.topics import Topics

    from .kafka_flags import kafka_security

    bootstrap = _bootstrap(args)
    try:
        settings = TopicSettings(
            partitions=args.partitions,
            replication_factor=args.replication_factor,
            max_payload_bytes=max_payload_bytes(args.max_payload_bytes),
        )
        if args.action == "migrate":
            from .migrate import migrate_changelogs

            copied = migrate_changelogs(bootstrap, Topics(args.prefix), settings, security=kafka_security(args))
            if not copied:
                print(f"nothing to migrate: no per-table changelogs under the prefix {args.prefix!r}")
            for table, count in copied.items():
                print(f"{table}: {count} records copied")
            return 0
        created = ensure_topics(bootstrap, Topics(args.prefix), settings, security=kafka_security(args))
    except (ServerError, PayloadLimitError) as exc:
        print(f"keystate topics: {exc}", file=sys.stderr)
        return 1
    print(f"topics ready on {bootstrap} ({len(created)} created)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("kafka", help="start|stop|status of a local KRaft broker (no Docker needed)", add_help=False)

    topics = sub.add_parser("topics", help="create keystate's topics (idempotent), or migrate an older version's")
    topics.add_argument("action", choices=["create", "migrate"],
                        help="create: create or check the topics; migrate: copy an older version's per-table changelogs "
                        "into the one changelog topic (processors stopped)")
    topics.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or %(default)s)")
    topics.add_argument("--prefix", default="keystate.", help="topic name prefix (default %(default)s)")
    topics.add_argument("--partitions", type=int, default=8, help="partitions of the log and changelogs (default %(default)s)")
    topics.add_argument("--replication-factor", type=int, default=1, help="replicas per partition (default %(default)s)")
    topics.add_argument(
        "--max-payload-bytes",
        help="the payload limit the topics must hold records for (default $KEYSTATE_MAX_PAYLOAD_BYTES or 8 MiB)",
    )
    from .kafka_flags import add_kafka_security_args

    add_kafka_security_args(topics)
    topics.set_defaults(run=_topics)

    from .runtime import add_parsers

    add_parsers(sub, _bootstrap)
    from .identity import add_parser as add_identity_parser

    add_identity_parser(sub)
    sub.add_parser("dev", help="start|stop the runtime on a local broker with the examples", add_help=False)
    for group, (_, help_text) in _ADMIN_GROUPS.items():
        sub.add_parser(group, help=help_text, add_help=False)
    from .log_tail import add_parser as add_log_parser

    add_log_parser(sub, _bootstrap)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("KEYSTATE_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["kafka"]:
        from . import kafka

        return kafka.main(argv[1:])
    if argv[:1] == ["dev"]:
        from . import dev

        return dev.main(argv[1:])
    if argv[:1] and argv[0] in _ADMIN_GROUPS:
        module = importlib.import_module(f".{_ADMIN_GROUPS[argv[0]][0]}", __name__)
        return int(module.main(argv[1:]))
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
