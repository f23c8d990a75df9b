"""The batch step and its driver are pure: no Kafka client, no event loop, no clock, no threads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROCESSORS = Path(__file__).resolve().parents[2] / "processors"
PURE = ("records.py", "quarantine.py", "step.py", "runner.py", "router.py", "partition.py", "driver.py", "changelog.py")
IO_MODULES = ("asyncio", "confluent_kafka", "aiohttp", "time", "socket", "threading")


def _io_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in IO_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in IO_MODULES:
            found.add(node.module or "")
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_io(name: str) -> None:
    assert _io_imports((PROCESSORS / name).read_text()) == set()


def test_the_check_catches_an_io_import() -> None:
    assert _io_imports("from confluent_kafka import Producer\nimport time\n") == {"confluent_kafka", "time"}
