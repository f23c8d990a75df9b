"""Runs keystate as real processes (processor, ingress, deployment) for end-to-end tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVICES_SCRIPT = str(Path(__file__).with_name("services.py"))
"""The deployment the end-to-end tests run: examples plus test services (`python services.py PORT`)."""


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, not handed out before in this run.

    A port from bind(0) is ephemeral: between its close and the server's bind, an outgoing connection
    (the Kafka clients open many) may take it as its local port, and the server exits with "address in
    use". Ports outside that range are never taken that way.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 20000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {max(1024, low - 20000)} and {low}")


class Proc:
    """A child process with its output in a file; stopped by pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The JSON body; an empty body (a handler that returned None) is None."""
        return json.loads(self.body) if self.body else None


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 60.0) -> HttpResponse:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    hdrs = {"content-type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return HttpResponse(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def wait_http(url: str, timeout: float = 60.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            # The first line names the cause: CI's summary shows only that line.
            last = next((line for line in reversed(proc.tail().splitlines()) if line.strip()), "(no output)")
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) before {url} answered: {last}\n{proc.tail()}")
        try:
            if http("GET", url, timeout=2.0).status == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s" + (f"\n{proc.tail()}" if proc else ""))


@dataclass
class Stack:
    """One keystate installation on its own topic prefix: processors, an ingress, deployments."""

    bootstrap: str
    prefix: str
    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    ingress_port: int = 0
    admin_port: int = 0

    def _python(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, [sys.executable, *args], self.workdir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def processor(self, instance_id: str = "0", *extra: str) -> Proc:
        return self._python(
            f"processor-{instance_id}",
            ["-m", "keystate.cli", "processor", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
             "--instance-id", f"{self.prefix}{instance_id}", *extra],
        )

    def ingress(self, env: dict[str, str] | None = None) -> Proc:
        if not self.ingress_port:
            self.ingress_port, self.admin_port = free_port(), free_port()
        proc = self._python(
            "ingress",
            ["-m", "keystate.cli", "ingress", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
             "--port", str(self.ingress_port), "--admin-port", str(self.admin_port)],
            env,
        )
        wait_http(f"{self.admin_url}/health", proc=proc)
        return proc

    def deployment(self, module: str, port: int, name: str = "deployment", env: dict[str, str] | None = None) -> Proc:
        """Serve `module` (a file under tests/e2e or examples that calls keystate.serve) on `port`."""
        proc = self._python(name, [module, str(port)], env)
        wait_http(f"http://127.0.0.1:{port}/discover", proc=proc)
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def register(self, uri: str) -> dict[str, Any]:
        resp = http("POST", f"{self.admin_url}/deployments", {"uri": uri})
        assert resp.status in (200, 201), resp.body
        return resp.json()

    def logs(self) -> str:
        return "\n\n".join(f"== {p.name} ==\n{p.tail(60)}" for p in self.procs)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


# ---- fault injection: pause a process, a load of idempotent adds, the exactly-once check ----------


def pause(proc: Proc) -> None:
    """SIGSTOP: the process freezes as in a long GC or VM pause (its sockets stay open)."""
    os.kill(proc.pid, signal.SIGSTOP)


def resume(proc: Proc) -> None:
    """SIGCONT a paused process (harmless if it runs)."""
    if proc.alive():
        os.kill(proc.pid, signal.SIGCONT)


@dataclass
class Add:
    """One logical `POST /Counter/<key>/add` of 1: every try carries the same idempotency key."""

    key: str
    idempotency_key: str
    started: float
    tries: int = 0
    acked_at: float | None = None
    old_value: int | None = None


class AddLoad:
    """`clients` threads each adding 1 to keys in turn, retrying an add with the SAME idempotency key
    on any error or timeout until it is acknowledged (200), as a careful client would.

    An add counts as an attempt from its first try; it is acknowledged when a try answers 200, and
    the answer (the counter's old value) is kept so `check_counts` can prove each add applied once.
    """

    def __init__(self, base_url: str, keys: list[str], clients: int = 8, request_timeout: float = 10.0,
                 retry_pause: float = 0.2) -> None:
        self.base_url = base_url
        self.keys = keys
        self.clients = clients
        self.request_timeout = request_timeout
        self.retry_pause = retry_pause
        self.adds: list[Add] = []
        self.failed_tries = 0
        self.first_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._give_up_at = float("inf")
        self._threads = [threading.Thread(target=self._client, args=(i,), name=f"add-client-{i}", daemon=True)
                         for i in range(clients)]

    def start(self) -> AddLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, drain_timeout: float = 120.0) -> None:
        """No new adds; wait up to drain_timeout for the ones in flight to be acknowledged."""
        self._give_up_at = time.monotonic() + drain_timeout
        self._stop.set()
        for thread in self._threads:
            thread.join(max(0.0, self._give_up_at - time.monotonic()) + self.request_timeout + 5)

    @property
    def acked(self) -> list[Add]:
        with self._lock:
            return [a for a in self.adds if a.acked_at is not None]

    @property
    def unacked(self) -> list[Add]:
        with self._lock:
            return [a for a in self.adds if a.acked_at is None]

    def ack_count(self) -> int:
        return len(self.acked)

    def wait_acks(self, more: int, timeout: float) -> bool:
        """Wait until `more` further adds are acknowledged; False on timeout."""
        target = self.ack_count() + more
        deadline = time.monotonic() + timeout
        while self.ack_count() < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _client(self, index: int) -> None:
        turn = index
        while not self._stop.is_set():
            add = Add(self.keys[turn % len(self.keys)], f"{index}-{uuid.uuid4().hex}", time.monotonic())
            turn += self.clients
            with self._lock:
                self.adds.append(add)
            self._until_acked(add)

    def _until_acked(self, add: Add) -> None:
        url = f"{self.base_url}/Counter/{add.key}/add"
        while time.monotonic() < self._give_up_at:
            add.tries += 1
            try:
                resp = http("POST", url, 1, headers={"idempotency-key": add.idempotency_key}, timeout=self.request_timeout)
                if resp.status == 200:
                    add.old_value = int(resp.json())
                    add.acked_at = time.monotonic()
                    return
                error = f"{resp.status} {resp.body[:200]!r}"
            except (OSError, urllib.error.URLError, ValueError) as exc:  # refused, reset, timed out
                error = repr(exc)
            with self._lock:
                self.failed_tries += 1
                self.first_error = self.first_error or error
            time.sleep(self.retry_pause)


@dataclass
class CountCheck:
    """What the counters say about a finished AddLoad, per key and in total."""

    attempts: int
    acked: int
    lost: int  # acknowledged adds missing from the final counts
    doubled: int  # counts above the number of adds ever attempted
    repeated_answers: int  # acknowledged adds that saw the same old value as another: applied twice
    unreadable: list[str]  # keys whose count could not be read
    per_key: dict[str, tuple[int, int, int]]  # key -> (attempts, acked, final count)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.repeated_answers == 0 and not self.unreadable


def read_count(base_url: str, key: str, timeout: float = 60.0) -> int | None:
    """GET the counter, retrying while the system recovers; None if it never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = http("POST", f"{base_url}/Counter/{key}/get", timeout=10.0)
            if resp.status == 200:
                return int(resp.json())
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.5)
    return None


def check_counts(base_url: str, load: AddLoad) -> CountCheck:
    """Compare each key's final count with the adds attempted and acknowledged on it.

    lost: final count below the acknowledged adds; doubled: final count above the attempted ones;
    repeated answers: two acknowledged adds that saw the same old value (one was applied twice, or
    an answer was not the add's own).
    """
    attempts: dict[str, int] = {}
    acked: dict[str, list[int]] = {}
    for add in load.adds:
        attempts[add.key] = attempts.get(add.key, 0) + 1
        if add.acked_at is not None:
            assert add.old_value is not None
            acked.setdefault(add.key, []).append(add.old_value)
    lost = doubled = repeated = 0
    unreadable: list[str] = []
    per_key: dict[str, tuple[int, int, int]] = {}
    for key, tried in attempts.items():
        olds = acked.get(key, [])
        count = read_count(base_url, key)
        if count is None:
            unreadable.append(key)
            continue
        per_key[key] = (tried, len(olds), count)
        lost += max(0, len(olds) - count)
        doubled += max(0, count - tried)
        repeated += len(olds) - len(set(olds))
    return CountCheck(sum(attempts.values()), sum(len(v) for v in acked.values()), lost, doubled, repeated, unreadable, per_key)
