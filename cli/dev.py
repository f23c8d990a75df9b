"""`keystate dev start|stop`: the whole runtime on a local broker, serving and registering the examples.

Everything listens on loopback, so no token is needed; a `$KEYSTATE_ADMIN_TOKEN` or
`$KEYSTATE_INGRESS_TOKEN` in the environment is inherited by the runtime and used here too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .deployments import CliError, admin_token
from .kafka import REPO, LocalKafka, LocalKafkaError

__all__ = ["main"]

RUN = REPO / ".run"
INGRESS, ADMIN, EXAMPLES = 8080, 9070, 9080


def _pid_file(name: str) -> Path:
    return RUN / f"{name}.pid"


def _alive(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    pid = _alive(name)
    if pid is not None:
        return pid
    log = open(RUN / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=env)
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _wait(url: str, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _alive(name) is None:
            raise SystemExit(f"keystate dev: {name} exited; see {RUN / (name + '.log')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise SystemExit(f"keystate dev: {url} did not answer within {timeout:g} s; see {RUN / (name + '.log')}")


def _register(uri: str) -> dict[str, Any]:
    body = json.dumps({"uri": uri}).encode()
    token = admin_token()  # the runtime inherited the same environment
    headers = {"content-type": "application/json", **(token.headers if token is not None else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{ADMIN}/deployments", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to `path` meanwhile.

    librdkafka writes its start-up chatter ("Purging unserved events", retries while the broker
    loads its coordinators) straight to fd 2, past Python's logging: it goes to the dev log
    instead of the terminal, and is shown only if the step fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start() -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    try:
        bootstrap = LocalKafka().start()
    except LocalKafkaError as exc:
        print(f"keystate dev: {exc}", file=sys.stderr)
        return 1
    from keystate.server.errors import ServerError
    from keystate.server.kafka_security import ENV_VARS, KafkaSecurity
    from keystate.server.topics import ensure_topics

    dev_log = RUN / "dev.log"
    try:
        with _stderr_into(dev_log):
            created = ensure_topics(bootstrap, security=KafkaSecurity())  # the local broker speaks PLAINTEXT
    except ServerError as exc:
        print(f"keystate dev: {exc}\n{_tail(dev_log)}", file=sys.stderr)
        return 1
    if created:
        print(f"created topics {', '.join(created)}")
    python = sys.executable
    # The local broker speaks PLAINTEXT: settings meant for another cluster must not reach the runtime.
    plain_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS.values()}
    _spawn("runtime", [python, "-m", "keystate.cli", "runtime", "--bootstrap", bootstrap,
                       "--port", str(INGRESS), "--admin-port", str(ADMIN)], env=plain_env)
    _spawn("examples", [python, str(REPO / "examples" / "serve.py"), str(EXAMPLES)])
    _wait(f"http://127.0.0.1:{ADMIN}/health", "runtime")
    _wait(f"http://127.0.0.1:{EXAMPLES}/discover", "examples")
    try:
        deployment = _register(f"http://127.0.0.1:{EXAMPLES}")
    except (CliError, urllib.error.HTTPError) as exc:
        print(f"keystate dev: registering the examples failed: {exc}", file=sys.stderr)
        return 1
    services = ", ".join(s["name"] for s in deployment["services"])
    url = f"http://127.0.0.1:{INGRESS}"
    print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
    print(f"ingress {url}, admin http://127.0.0.1:{ADMIN}, deployment {deployment['id']} serving {services}")
    print(f"logs and pids in {RUN}; stop everything with `make stop`\n")
    json_h = "-H 'content-type: application/json'"
    if os.environ.get("KEYSTATE_INGRESS_TOKEN", "").strip():
        # The variable, not its value: the token stays out of the terminal's scrollback.
        url = f"-H \"Authorization: Bearer $KEYSTATE_INGRESS_TOKEN\" {url}"
    print("try:")
    print(f"  curl -s {url}/Greeter/greet {json_h} -d '\"Sarah\"'")
    print(f"  curl -s {url}/Counter/alice/add {json_h} -d '5'")
    print(f"  curl -s -X POST {url}/Counter/alice/get")
    print(f"  curl -s {url}/ShoppingCart/cart-1/addItem {json_h} -d '{{\"product_id\": \"shoe\", \"quantity\": 2, \"price\": 39.5}}'")
    print(f"  curl -s -X POST {url}/ShoppingCart/cart-1/getTotal")
    print(f"  curl -s {url}/SubscriptionService/add {json_h} -d '{{\"user_id\": \"u1\", \"credit_card\": \"4111-1111\", \"subscriptions\": [\"news\", \"music\"]}}'")
    print(f"  curl -s {url}/Greeter/greet/send {json_h} -d '\"later\"'")
    print(f"  curl -s {url}/UserSignup/ann/run/send {json_h} -d '{{\"name\": \"Ann\", \"email\": \"ann@example.com\"}}'")
    print(f"  grep -o 'secret=[0-9a-f-]*' {RUN / 'examples.log'} | tail -1   # the mailed link")
    print(f"  curl -s {url}/UserSignup/ann/click {json_h} -d '\"<secret>\"'")
    print(f"  curl -s {url}/restate/workflow/UserSignup/ann/attach")
    print(f"  curl -s {url}/Payments/pay {json_h} -d '{{\"card\": \"4242424242424242\", \"amount_cents\": 1250}}'")
    print(f"  curl -s {url}/Payments/memo -H 'content-type: text/plain' -d 'paid in full'")
    print("then look inside:")
    print("  keystate invocations list                 # -w to follow; --status, --service, --key, target prefixes")
    print("  keystate invocations describe <inv_...>   # status and the journal as a timeline")
    print("  keystate state get Counter alice")
    print("  keystate sql \"SELECT status, count(*) AS n FROM sys_invocation GROUP BY status\"")
    return 0


def stop() -> int:
    for name in ("examples", "runtime"):
        pid = _alive(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if _alive(name) is None:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        _pid_file(name).unlink(missing_ok=True)
    LocalKafka().stop()
    print("stopped")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="keystate dev", description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    args = parser.parse_args(argv)
    return start() if args.action == "start" else stop()
