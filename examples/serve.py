"""Serve every example on one port: `python examples/serve.py [port]` (default 9080).

Binds 127.0.0.1 unless KEYSTATE_EXAMPLES_HOST says otherwise (0.0.0.0 in docker-compose.yml).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keystate  # noqa: E402
from cart import cart  # noqa: E402
from greeter import counter, greeter  # noqa: E402
from payments import payments  # noqa: E402
from signup import user_signup  # noqa: E402
from subscription import subscription_service  # noqa: E402

SERVICES = [greeter, counter, cart, subscription_service, user_signup, payments]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("KEYSTATE_EXAMPLES_HOST", "127.0.0.1")
    keystate.serve(SERVICES, port=int(sys.argv[1]) if len(sys.argv) > 1 else 9080, host=host)
