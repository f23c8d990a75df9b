"""The type-check set-up of `make lint`: every package checked, strict where issue 7 asks for it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from mypy.main import process_options
from mypy.options import Options

ROOT = Path(__file__).resolve().parents[2]
STRICT = ["keystate", "keystate._context", "keystate.serde", "keystate.schemas", "keystate.schemas.ids",
          "keystate.processors.state_machine", "keystate.processors.state_machine.apply"]
TYPED = ["keystate.server.kafka", "keystate.ingress.app", "keystate.processors", "keystate.processors.worker",
         "keystate.cli.dev"]
# Options' values under `strict`; a per-module `strict = true` would instead switch strict on everywhere.
STRICT_FLAGS = {"disallow_untyped_defs": True, "disallow_incomplete_defs": True, "disallow_untyped_calls": True,
                "disallow_any_generics": True, "warn_return_any": True, "implicit_reexport": False}


@pytest.fixture(scope="module")
def options() -> Options:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        _, opts = process_options(["--config-file", str(ROOT / "pyproject.toml")], require_targets=False)
    finally:
        os.chdir(cwd)
    return opts


@pytest.fixture(scope="module")
def typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / ".ci" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module", STRICT)
def test_sdk_schemas_and_state_machine_are_strict(options: Options, module: str) -> None:
    per_module = options.clone_for_module(module)
    assert {flag: getattr(per_module, flag) for flag in STRICT_FLAGS} == STRICT_FLAGS


@pytest.mark.parametrize("module", TYPED)
def test_server_parts_are_checked_but_not_strict(options: Options, module: str) -> None:
    per_module = options.clone_for_module(module)
    assert per_module.check_untyped_defs
    assert {flag: getattr(per_module, flag) for flag in STRICT_FLAGS} == {f: not v for f, v in STRICT_FLAGS.items()}


def test_every_source_file_is_checked_under_its_package_name(typecheck: ModuleType) -> None:
    sources = {s.module: s.path for s in typecheck._sources()}
    assert sources["keystate"] == "sdk/__init__.py"
    assert sources["keystate._context"] == "sdk/_context.py"
    assert sources["keystate.processors.state_machine.apply"] == "processors/state_machine/apply.py"
    assert sources["keystate.cli.dev"] == "cli/dev.py"
    folders = ("sdk", "schemas", "ingress", "processors", "cli", "server")
    on_disk = {str(p.relative_to(ROOT)) for folder in folders for p in (ROOT / folder).rglob("*.py")}
    assert set(sources.values()) == on_disk
