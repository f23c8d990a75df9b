"""Run mypy over keystate's packages at their source paths, with the config in pyproject.toml.

pyproject maps folders to packages (sdk/ -> keystate, schemas/ -> keystate.schemas, ...) and the
editable install resolves them with an import hook, which mypy cannot follow: `mypy -p keystate`
finds nothing. So this script gives mypy each file with its real module name; errors name the
source files (sdk/_context.py, not a copy). Exit status as mypy's: 0 clean, 1 findings.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from mypy import build
from mypy.main import process_options
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parents[1]


def _sources() -> list[BuildSource]:
    """One BuildSource per .py file of every package in pyproject's package-dir mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    folders = {(ROOT / folder).resolve(): package for package, folder in package_dir.items()}
    sources: dict[str, BuildSource] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            # A nested folder mapped to its own package (processors/state_machine) is named by it.
            owner = max((f for f in folders if path.is_relative_to(f)), key=lambda f: len(f.parts))
            parts = [*folders[owner].split("."), *path.relative_to(owner).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            module = ".".join(parts)
            sources[module] = BuildSource(str(path.relative_to(ROOT)), module)
    return list(sources.values())


def main() -> int:
    os.chdir(ROOT)  # paths in findings relative to the checkout, and pyproject found
    _, options = process_options(["--config-file", str(ROOT / "pyproject.toml")], require_targets=False)
    sources = _sources()
    try:
        result = build.build(sources, options)
        errors = result.errors
    except build.CompileError as exc:  # a syntax error or a blocking config problem
        errors = exc.messages
    for line in errors:
        print(line)
    files = len(sources)
    found = sum(1 for line in errors if ": error:" in line)
    if found:
        print(f"mypy: {found} errors in {files} source files", file=sys.stderr)
        return 1
    print(f"mypy: no issues in {files} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
