"""Runs keystate as real processes (processor, ingress, deployment) for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVICES_SCRIPT = str(Path(__file__).with_name("services.py"))
"""The deployment the end-to-end tests run: examples plus test services (`python services.py PORT`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
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

    def ingress(self) -> Proc:
        if not self.ingress_port:
            self.ingress_port, self.admin_port = free_port(), free_port()
        proc = self._python(
            "ingress",
            ["-m", "keystate.cli", "ingress", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
             "--port", str(self.ingress_port), "--admin-port", str(self.admin_port)],
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
