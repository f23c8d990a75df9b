"""The dependency rule of DESIGN.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# folder -> import name, as mapped in pyproject.toml
PACKAGES = {
    "server": "keystate.server",
    "sdk": "keystate",
    "schemas": "keystate.schemas",
    "ingress": "keystate.ingress",
    "processors": "keystate.processors",
    "cli": "keystate.cli",
}
SERVER_PARTS = ("keystate.ingress", "keystate.processors", "keystate.cli", "keystate.server")
IO_MODULES = ("asyncio", "confluent_kafka", "aiohttp", "time", "socket", "threading", "random")


def _module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    rest = path.relative_to(ROOT / folder).with_suffix("").parts
    parts = [*PACKAGES[folder].split("."), *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names imported by a file, with relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                names.add(f"{prefix}.{node.module}" if node.module else prefix)
            elif node.module:
                names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("folder", ["sdk", "schemas"])
def test_sdk_and_schemas_never_import_server_parts(folder: str) -> None:
    offenders = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in _files(folder)
        for name in _imports(p)
        if any(_within(name, part) for part in SERVER_PARTS) or _within(name, "confluent_kafka")
    }
    assert not offenders


def test_schemas_never_imports_the_sdk() -> None:
    offenders = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in _files("schemas")
        for name in _imports(p)
        if _within(name, "keystate") and not _within(name, "keystate.schemas")
    }
    assert not offenders


@pytest.mark.parametrize(("folder", "forbidden"), [("ingress", "keystate.processors"), ("processors", "keystate.ingress")])
def test_ingress_and_processors_never_import_each_other(folder: str, forbidden: str) -> None:
    offenders = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in _files(folder)
        for name in _imports(p)
        if _within(name, forbidden) or _within(name, "keystate.cli")
    }
    assert not offenders


def test_state_machine_is_pure() -> None:
    files = _files("processors/state_machine")
    assert files, "the state machine package is missing"
    offenders = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files
        for name in _imports(p)
        if any(_within(name, io) for io in IO_MODULES)
        or (_within(name, "keystate.processors") and not _within(name, "keystate.processors.state_machine"))
    }
    assert not offenders


def test_the_rule_checker_sees_violations(tmp_path: Path) -> None:
    """A checker that never finds anything proves nothing: feed it a known violation."""
    bad = ROOT / "processors" / "state_machine" / "_probe_violation.py"
    bad.write_text("import asyncio\nfrom ..invoker import x\n")
    try:
        assert {"asyncio", "keystate.processors.invoker"} <= _imports(bad)
    finally:
        bad.unlink()


def test_server_plumbing_never_imports_ingress_processors_or_cli() -> None:
    offenders = {
        f"{p.relative_to(ROOT)} imports {name}"
        for p in _files("server")
        for name in _imports(p)
        if any(_within(name, part) for part in ("keystate.ingress", "keystate.processors", "keystate.cli"))
    }
    assert not offenders
