"""Every Kafka client keystate builds takes its config from KafkaSettings or admin_config (so SASL/TLS reach it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "processors", "ingress", "cli", "sdk", "schemas")
CLIENTS = {"Producer", "Consumer", "AdminClient"}
# The local broker's readiness probe talks to the PLAINTEXT listener of the dev broker on purpose.
EXEMPT = {("cli/kafka.py", "answers")}


def unconfigured_clients(source: str, path: str) -> list[str]:
    """`path:line` of each client construction whose config is not a `*_config(...)` call."""
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call) and _name(node.func) in CLIENTS:
            config = node.args[0] if node.args else None
            configured = isinstance(config, ast.Call) and _name(config.func).endswith("_config")
            if not configured and (path, function) not in EXEMPT:
                found.append(f"{path}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), "<module>")
    return found


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def test_every_client_in_keystate_is_built_from_its_settings() -> None:
    offenders = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            offenders += unconfigured_clients(file.read_text(), path)
    assert offenders == [], "build these clients with KafkaSettings.*_config() or admin_config(): " + ", ".join(offenders)


def test_the_checker_catches_a_bare_config() -> None:
    source = (
        "def f(bootstrap, settings):\n"
        "    Producer({'bootstrap.servers': bootstrap})\n"
        "    Consumer(settings.consumer_config(**{'group.id': 'g'}))\n"
        "    AdminClient(admin_config(bootstrap))\n"
    )
    assert unconfigured_clients(source, "x.py") == ["x.py:2"]
