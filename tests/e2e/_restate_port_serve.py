"""Serves examples/payments.py's module-level `app` (as restate-sdk builds it) on the port given: `python _restate_port_serve.py PORT`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from payments import app  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]))
