"""A local KRaft broker (or a 3-node cluster) run from Apache Kafka's jars, for development and tests.

No Docker: the jars listed in ``kafka/pom.xml`` are fetched once with Maven into
``~/.cache/keystate/kafka-<version>/libs`` (``$KEYSTATE_CACHE`` moves the cache) and each node runs as a
detached ``java kafka.Kafka server.properties`` process whose pid, config, data and log live in a run
folder (``<repo>/.run/kafka`` or ``$KEYSTATE_RUN_DIR``).

Errors::

    LocalKafkaError
    ├── JavaNotFound        no Java 17+ on JAVA_HOME or PATH
    ├── MavenNotFound       the jars are not cached and mvn is missing
    ├── JarDownloadFailed   mvn dependency:copy-dependencies failed
    ├── PortInUse           a listener port on 127.0.0.1 is taken
    ├── FormatFailed        kafka-storage format failed
    ├── BrokerExited        a node's process ended while starting (the message has its log tail)
    └── BrokerTimeout       the broker did not answer a metadata request in time
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BrokerExited",
    "BrokerTimeout",
    "FormatFailed",
    "JarDownloadFailed",
    "JavaNotFound",
    "KafkaStatus",
    "LocalCluster",
    "LocalKafka",
    "LocalKafkaError",
    "MavenNotFound",
    "NodeStatus",
    "PortInUse",
    "ensure_jars",
    "find_java",
    "main",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
POM = REPO / "kafka" / "pom.xml"
LOG4J2 = Path(__file__).with_name("log4j2.xml")

DEFAULT_PORT = 19092
DEFAULT_CLUSTER_PORT = 29092
CLUSTER_SIZE = 3
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
JVM_OPTS = ("-Xmx512m", "-Xms256m", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
HOST = "127.0.0.1"
FIX_PORTS = "choose other ports with --port N (or KEYSTATE_KAFKA_PORT=N; --port 0 picks free ports)"
USE_OWN_BROKER = "or set KAFKA_BOOTSTRAP_SERVERS to a broker you run yourself"

# Settings shared by every node. docker-compose.yml repeats the single-node set: keep them identical.
COMMON_SETTINGS: Mapping[str, str] = {
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.num.partitions": "4",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "10000",
}
SINGLE_NODE_SETTINGS: Mapping[str, str] = {
    **COMMON_SETTINGS,
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
}
CLUSTER_SETTINGS: Mapping[str, str] = {
    **COMMON_SETTINGS,
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    # A killed follower leaves the ISR within 10 s instead of 30 s, so acks=all writes resume sooner.
    "replica.lag.time.max.ms": "10000",
}


class LocalKafkaError(Exception):
    """Root of the errors of the local broker."""


class JavaNotFound(LocalKafkaError):
    """No Java 17+ to run the broker."""


class MavenNotFound(LocalKafkaError):
    """The jars are not cached and Maven is not installed to fetch them."""


class JarDownloadFailed(LocalKafkaError):
    """Maven could not fetch the jars."""


class PortInUse(LocalKafkaError):
    """A listener port is already taken."""


class FormatFailed(LocalKafkaError):
    """kafka-storage format failed."""


class BrokerExited(LocalKafkaError):
    """A node's process ended while it was starting."""


class BrokerTimeout(LocalKafkaError):
    """The broker did not answer in time."""


# --- jars and java -----------------------------------------------------------------------------


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in the pom."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if match is None:
        raise LocalKafkaError(f"{pom} has no <kafka.version> property")
    return match.group(1).strip()


def cache_root() -> Path:
    """Where jars are cached: $KEYSTATE_CACHE or ~/.cache/keystate."""
    return Path(os.environ.get("KEYSTATE_CACHE") or Path.home() / ".cache" / "keystate")


def ensure_jars(pom: Path = POM) -> Path:
    """The folder of the broker's jars, fetched with Maven unless cached for this exact pom."""
    if not pom.is_file():
        raise LocalKafkaError(f"{pom} not found: run from a source checkout of keystate, {USE_OWN_BROKER}")
    folder = cache_root() / f"kafka-{kafka_version(pom)}"
    libs, marker = folder / "libs", folder / "libs.pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _cached(libs, marker, digest):
        return libs
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / ".lock"):
        if not _cached(libs, marker, digest):  # another process may have fetched them meanwhile
            marker.unlink(missing_ok=True)
            _fetch_jars(pom, folder, libs)
            marker.write_text(digest + "\n")
    return libs


def _cached(libs: Path, marker: Path, digest: str) -> bool:
    return marker.is_file() and marker.read_text().strip() == digest and libs.is_dir()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_jars(pom: Path, folder: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenNotFound(
            f"the Kafka jars are not in {libs} and Maven is missing: install it (apt-get install maven) "
            f"or set KAFKA_BOOTSTRAP_SERVERS to a broker you run yourself"
        )
    staging = folder / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    command = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    log.info("fetching the Kafka jars into %s (once)", libs)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise JarDownloadFailed(
            f"mvn could not fetch the Kafka jars (exit {done.returncode}); check network access to Maven "
            f"Central or ~/.m2/settings.xml. Output:\n{_tail_text(done.stdout + done.stderr)}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


def find_java() -> str:
    """Path of a Java 17+ executable, from JAVA_HOME or PATH."""
    java_home = os.environ.get("JAVA_HOME")
    home_java = Path(java_home, "bin", "java") if java_home else None
    java = str(home_java) if home_java and home_java.is_file() else shutil.which("java")
    fix = f"install a JDK 17+ (apt-get install openjdk-17-jre-headless) {USE_OWN_BROKER}"
    if java is None:
        raise JavaNotFound(f"no java on JAVA_HOME or PATH: {fix}")
    major = _java_major(java)
    if major < 17:
        raise JavaNotFound(f"{java} is Java {major} but Kafka 4 needs 17+: {fix}")
    return java


def _java_major(java: str) -> int:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaNotFound(f"{java} -version failed ({exc}): install a JDK 17+ {USE_OWN_BROKER}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# --- ports -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _check_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java's server sockets set SO_REUSEADDR too, so TIME_WAIT leftovers don't count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise PortInUse(
                f"port {port} on {HOST} ({what}) is in use ({exc.strerror}): stop whatever listens there "
                f"(keystate kafka stop, if it is a previous broker) or {FIX_PORTS}"
            ) from exc


# --- one node ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """Identity and ports of one combined broker+controller node."""

    node_id: int
    port: int
    controller_port: int
    sasl_port: int | None = None  # a SASL_PLAINTEXT listener too (see cli/kafka_sasl.py)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        return None if self.sasl_port is None else f"{HOST}:{self.sasl_port}"

    @property
    def voter(self) -> str:
        return f"{self.node_id}@{HOST}:{self.controller_port}"


@dataclass(frozen=True)
class NodeStatus:
    """A node's process as seen from its pid file."""

    node_id: int
    pid: int | None
    bootstrap: str
    folder: Path


@dataclass(frozen=True)
class KafkaStatus:
    """running: every node's process is alive and the bootstrap answers a metadata request."""

    running: bool
    bootstrap: str | None
    nodes: tuple[NodeStatus, ...]


class Node:
    """One java process in its own folder: server.properties, data/, broker.log, kafka.out, kafka.pid."""

    def __init__(self, folder: Path, spec: NodeSpec) -> None:
        self.folder = folder
        self.spec = spec
        self.properties = folder / "server.properties"
        self.pid_file = folder / "kafka.pid"
        self.log_file = folder / "broker.log"
        self.out_file = folder / "kafka.out"
        self.data = folder / "data"
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def load(cls, folder: Path) -> Node | None:
        """The node configured in folder by an earlier start, if any."""
        try:
            props = _read_properties(folder / "server.properties")
            spec = NodeSpec(int(props["node.id"]), *_listener_ports(props["listeners"]), _sasl_port(props["listeners"]))
        except (OSError, KeyError, ValueError):
            return None
        return cls(folder, spec)

    def configure(self, voters: str, settings: Mapping[str, str]) -> None:
        """Write server.properties and log4j2.xml; wipe data/ if the configuration changed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        sasl = f",SASL_PLAINTEXT://{HOST}:{self.spec.sasl_port}" if self.spec.sasl_port is not None else ""
        text = _render_properties({
            "node.id": str(self.spec.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{self.spec.port},CONTROLLER://{HOST}:{self.spec.controller_port}{sasl}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.spec.port}{sasl}",
            "log.dirs": str(self.data),
            **settings,
        })
        if not self.properties.is_file() or self.properties.read_text() != text:
            shutil.rmtree(self.data, ignore_errors=True)  # ports or settings changed: start afresh
            self.properties.write_text(text)
        if sasl:
            self.properties.chmod(0o600)  # it holds the SASL users' passwords
        shutil.copyfile(LOG4J2, self.folder / "log4j2.xml")

    def format(self, java: str, libs: Path, cluster_id: str) -> None:
        """kafka-storage format, unless data/ is already formatted."""
        if (self.data / "meta.properties").is_file():
            return
        command = [java, "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={self.folder / 'log4j2.xml'}",
                   f"-Dkafka.logs.dir={self.folder}", "kafka.tools.StorageTool", "format",
                   "-t", cluster_id, "-c", str(self.properties)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.folder)
        if done.returncode != 0:
            raise FormatFailed(
                f"formatting {self.data} failed (exit {done.returncode}); delete {self.folder} and retry. "
                f"Output:\n{_tail_text(done.stdout + done.stderr)}"
            )

    def launch(self, java: str, libs: Path) -> int:
        """Start the broker detached from this process; return its pid."""
        command = [java, *JVM_OPTS, f"-Dkafka.logs.dir={self.folder}",
                   f"-Dlog4j2.configurationFile={self.folder / 'log4j2.xml'}",
                   "-cp", f"{libs}/*", "kafka.Kafka", str(self.properties)]
        with self.out_file.open("ab") as out:
            self._process = subprocess.Popen(
                command, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        return self._process.pid

    def pid(self) -> int | None:
        """The pid of this node's live broker process, or None."""
        if self._process is not None:  # started here: Popen knows best (and reaps it)
            return self._process.pid if self._process.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_our_broker(pid, self.properties) else None

    def stop(self, timeout: float = STOP_TIMEOUT, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL when kill), wait up to timeout, then SIGKILL; remove the pid file."""
        pid = self.pid()
        if pid is not None:
            _signal(pid, signal.SIGKILL if kill else signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                log.warning("node %d (pid %d) ignored SIGTERM for %.0f s: killing it", self.spec.node_id, pid, timeout)
                _signal(pid, signal.SIGKILL)
                self._wait_gone(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        if self._process is not None and self._process.pid == pid:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _is_our_broker(pid, self.properties):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self) -> NodeStatus:
        return NodeStatus(self.spec.node_id, self.pid(), self.spec.bootstrap, self.folder)

    def failure_reason(self) -> str:
        """The last ERROR line of broker.log and the exception line after it, if any."""
        text = self.log_file.read_text(errors="replace") if self.log_file.is_file() else ""
        lines = text.splitlines()
        for index in range(len(lines) - 1, -1, -1):
            if re.match(r"\[[^]]+\] (ERROR|FATAL) ", lines[index]):
                follow = lines[index + 1 : index + 2]
                return "\n".join(lines[index : index + 1] + [line for line in follow if not line.startswith("[")])
        return "no ERROR in broker.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of broker.log and of the process's stdout/stderr."""
        parts = []
        for path in (self.log_file, self.out_file):
            text = path.read_text(errors="replace") if path.is_file() else ""
            if text.strip():
                parts.append(f"--- {path} (last {lines} lines) ---\n{_tail_text(text, lines)}")
        return "\n".join(parts) or f"(no output in {self.folder})"


def _is_our_broker(pid: int, properties: Path) -> bool:
    """pid is alive, not a zombie, and runs kafka.Kafka on this properties file."""
    proc = Path("/proc", str(pid))
    if proc.is_dir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if not cmdline:  # briefly empty while the java launcher execs
            return state != "Z"
        return state != "Z" and b"kafka.Kafka" in cmdline and str(properties).encode() in cmdline
    try:  # no /proc (macOS): trust the pid file
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _render_properties(props: Mapping[str, str]) -> str:
    return "# written by keystate (cli/kafka.py) on every start; edits are overwritten\n" + "".join(
        f"{key}={value}\n" for key, value in props.items()
    )


def _read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def _listener_ports(listeners: str) -> tuple[int, int]:
    ports = dict(re.findall(r"(\w+)://[^:,]+:(\d+)", listeners))
    return int(ports["PLAINTEXT"]), int(ports["CONTROLLER"])


def _sasl_port(listeners: str) -> int | None:
    port = dict(re.findall(r"(\w+)://[^:,]+:(\d+)", listeners)).get("SASL_PLAINTEXT")
    return None if port is None else int(port)


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _new_cluster_id() -> str:
    """A random 22-character base64url id, as kafka-storage random-uuid makes (never starting with '-')."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


# --- readiness ---------------------------------------------------------------------------------

_probe_log = logging.getLogger(f"{__name__}.probe")
_probe_log.setLevel(logging.CRITICAL)  # librdkafka's connection-refused chatter while waiting


def answers(bootstrap: str, brokers: int = 1, timeout: float = 3.0) -> bool:
    """The bootstrap answers a metadata request listing at least `brokers` brokers."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return False
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        raise LocalKafkaError("checking the broker needs confluent-kafka: pip install 'keystate[server]'") from exc
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000), "logger": _probe_log}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return len(metadata.brokers) >= brokers


# --- single node and cluster -------------------------------------------------------------------


class _Nodes:
    """Start, stop and status of `size` nodes under one run folder."""

    size = 1
    settings: Mapping[str, str] = SINGLE_NODE_SETTINGS

    def __init__(self, run_dir: Path, port: int, controller_port: int | None, start_timeout: float) -> None:
        self.run_dir = run_dir
        self.port = port
        self.controller_port = controller_port
        self.start_timeout = start_timeout
        self.nodes: list[Node] = []

    def _folder(self, node_id: int) -> Path:
        return self.run_dir

    @property
    def bootstrap(self) -> str:
        """Comma-separated broker addresses of the configured nodes."""
        return ",".join(node.spec.bootstrap for node in self._known_nodes())

    def _known_nodes(self) -> list[Node]:
        if not self.nodes:
            loaded = [Node.load(self._folder(i)) for i in range(1, self.size + 1)]
            if all(loaded):
                self.nodes = [node for node in loaded if node is not None]
        return self.nodes

    def start(self) -> str:
        """Start the nodes not already running, wait until they answer; return the bootstrap address."""
        java, libs = find_java(), ensure_jars()
        known = self._known_nodes()
        if known and any(node.pid() is not None for node in known):
            to_launch = [node for node in known if node.pid() is None]  # restart only the missing ones
        else:
            to_launch = self._configure(java, libs)
        for node in to_launch:
            ports = [(node.spec.port, "broker"), (node.spec.controller_port, "controller")]
            if node.spec.sasl_port is not None:
                ports.append((node.spec.sasl_port, "SASL"))
            for port, what in ports:
                _check_port(port, f"{what} listener of node {node.spec.node_id}")
        for node in to_launch:
            node.launch(java, libs)
        self._wait_ready(to_launch)
        return self.bootstrap

    def _configure(self, java: str, libs: Path) -> list[Node]:
        specs = self._specs()
        self.nodes = [Node(self._folder(spec.node_id), spec) for spec in specs]
        voters = ",".join(spec.voter for spec in specs)
        cluster_id = self._cluster_id()
        for node in self.nodes:
            node.configure(voters, self.settings)
            node.format(java, libs, cluster_id)
        return self.nodes

    def _specs(self) -> list[NodeSpec]:
        """Ports: brokers at port..port+size-1, controllers right after (or controller_port..); 0 = free."""
        ids = range(1, self.size + 1)
        if self.port == 0:
            return [NodeSpec(i, _free_port(), _free_port()) for i in ids]
        first_controller = self.controller_port or self.port + self.size
        return [NodeSpec(i, self.port + i - 1, first_controller + i - 1) for i in ids]

    def _cluster_id(self) -> str:
        path = self.run_dir / "cluster.id"
        if not path.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(_new_cluster_id() + "\n")
        return path.read_text().strip()

    def _wait_ready(self, launched: Sequence[Node]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not all(answers(node.spec.bootstrap, brokers=self.size) for node in launched):
            for node in launched:
                if node.pid() is None:
                    self.stop()
                    raise BrokerExited(
                        f"the broker process of node {node.spec.node_id} exited while starting: "
                        f"{node.failure_reason()}\n{node.log_tail()}"
                    )
            if time.monotonic() > deadline:
                tails = "\n".join(node.log_tail() for node in launched)
                self.stop()
                raise BrokerTimeout(
                    f"{self.bootstrap} did not answer within {self.start_timeout:.0f} s (stopped it again); "
                    f"raise the timeout (--timeout) or read the logs:\n{tails}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every node, wait up to timeout, then SIGKILL. Does nothing when nothing runs."""
        nodes = self._known_nodes()
        for node in nodes:
            pid = node.pid()
            if pid is not None:
                _signal(pid, signal.SIGTERM)  # all at once: each one's shutdown overlaps the others'
        for node in nodes:
            node.stop(timeout)

    def status(self) -> KafkaStatus:
        """Whether every node's process is alive and the bootstrap answers."""
        nodes = self._known_nodes()
        if not nodes:
            return KafkaStatus(False, None, ())
        statuses = tuple(node.status() for node in nodes)
        alive = all(status.pid is not None for status in statuses)
        return KafkaStatus(alive and answers(self.bootstrap, brokers=self.size), self.bootstrap, statuses)


class LocalKafka(_Nodes):
    """A single-node KRaft broker on 127.0.0.1 (broker port, controller port = port + 1 by default).

    With `sasl_users` ({name: password}) it also listens with SASL_PLAINTEXT (mechanism PLAIN) on
    `sasl_port` (port + 2 by default, a free port when port is 0): see `sasl_bootstrap`.
    """

    def __init__(
        self,
        run_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
        sasl_users: Mapping[str, str] | None = None,
        sasl_port: int | None = None,
    ) -> None:
        run = Path(run_dir or os.environ.get("KEYSTATE_RUN_DIR") or REPO / ".run" / "kafka")
        super().__init__(run, _default_port(port, DEFAULT_PORT), controller_port, start_timeout)
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port = sasl_port
        if self.sasl_users:
            from .kafka_sasl import sasl_settings

            self.settings = {**SINGLE_NODE_SETTINGS, **sasl_settings(self.sasl_users)}

    def _specs(self) -> list[NodeSpec]:
        specs = super()._specs()
        if not self.sasl_users:
            return specs
        spec = specs[0]
        sasl_port = self.sasl_port or (_free_port() if self.port == 0 else spec.controller_port + 1)
        return [NodeSpec(spec.node_id, spec.port, spec.controller_port, sasl_port)]

    @property
    def sasl_bootstrap(self) -> str | None:
        """The SASL_PLAINTEXT listener's address, if the broker has one."""
        nodes = self._known_nodes()
        return nodes[0].spec.sasl_bootstrap if nodes else None


class LocalCluster(_Nodes):
    """Three combined broker+controller nodes (ids 1..3), each in run_dir/node-<id> with its own pid and log."""

    size = CLUSTER_SIZE
    settings = CLUSTER_SETTINGS

    def __init__(
        self, run_dir: Path | str | None = None, port: int | None = None, *, start_timeout: float = START_TIMEOUT
    ) -> None:
        run = Path(run_dir or os.environ.get("KEYSTATE_CLUSTER_RUN_DIR") or REPO / ".run" / "kafka-cluster")
        super().__init__(run, _default_port(port, DEFAULT_CLUSTER_PORT), None, start_timeout)

    def _folder(self, node_id: int) -> Path:
        return self.run_dir / f"node-{node_id}"

    def node(self, node_id: int) -> Node:
        """The node with this id (1..3)."""
        for node in self._known_nodes():
            if node.spec.node_id == node_id:
                return node
        raise LocalKafkaError(f"no node {node_id} in {self.run_dir}: start the cluster first")

    def stop_node(self, node_id: int, *, kill: bool = True) -> None:
        """Stop one node by pid: SIGKILL (a crash) by default, SIGTERM (a clean shutdown) with kill=False."""
        self.node(node_id).stop(kill=kill)

    def start_node(self, node_id: int) -> None:
        """Restart a stopped node with its old config and data; wait until the cluster has all its brokers."""
        node = self.node(node_id)
        if node.pid() is None:
            node.launch(find_java(), ensure_jars())
            self._wait_ready([node])


def _default_port(port: int | None, default: int) -> int:
    if port is not None:
        return port
    return int(os.environ.get("KEYSTATE_KAFKA_PORT") or default)


# --- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate kafka", description="A local KRaft broker (no Docker needed).")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("start", "start it (idempotent); prints KAFKA_BOOTSTRAP_SERVERS=... last"),
                       ("stop", "stop it by pid (idempotent)"),
                       ("status", "exit 0 when running, 3 when not")):
        action = sub.add_parser(name, help=text)
        action.add_argument("--cluster", action="store_true", help=f"a {CLUSTER_SIZE}-node cluster instead")
        action.add_argument("--run-dir", type=Path, help="folder of config, data, logs and pids")
        if name == "start":
            action.add_argument("--port", type=int, help=(
                f"first broker port; controllers follow; 0 = free ports "
                f"(default $KEYSTATE_KAFKA_PORT or {DEFAULT_PORT}, {DEFAULT_CLUSTER_PORT} with --cluster)"))
            action.add_argument("--timeout", type=float, default=START_TIMEOUT,
                                help="seconds to wait for the broker (default %(default)s)")
            action.add_argument("--sasl-user", action="append", default=[], metavar="NAME:PASSWORD", help=(
                "also listen with SASL_PLAINTEXT (PLAIN) for this user (repeatable; local testing only: "
                "the password is visible to other local users in the process list)"))
    return parser


def _target(args: argparse.Namespace) -> _Nodes:
    port, timeout = getattr(args, "port", None), getattr(args, "timeout", START_TIMEOUT)
    users = getattr(args, "sasl_user", [])
    if args.cluster:
        if users:
            raise LocalKafkaError("--sasl-user works with the single-node broker only; leave out --cluster")
        return LocalCluster(args.run_dir, port, start_timeout=timeout)
    if users:
        from .kafka_sasl import parse_user

        return LocalKafka(args.run_dir, port, start_timeout=timeout, sasl_users=dict(parse_user(u) for u in users))
    return LocalKafka(args.run_dir, port, start_timeout=timeout)


def main(argv: list[str]) -> int:
    """`keystate kafka start|stop|status [--cluster]`."""
    args = _parser().parse_args(argv)
    try:
        target = _target(args)
        if args.action == "start":
            bootstrap = target.start()
            print(f"logs: {', '.join(str(node.log_file) for node in target.nodes)}")
            sasl = target.sasl_bootstrap if isinstance(target, LocalKafka) else None
            if sasl is not None:
                print(f"SASL_PLAINTEXT listener: KAFKA_BOOTSTRAP_SERVERS={sasl} KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
                      "KAFKA_SASL_MECHANISM=PLAIN with a --sasl-user's KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD(_FILE)")
            print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
            return 0
        if args.action == "stop":
            target.stop()
            print("stopped")
            return 0
        status = target.status()
        for node in status.nodes:
            print(f"node {node.node_id}: {'pid ' + str(node.pid) if node.pid else 'not running'} ({node.bootstrap})")
        print(f"running: KAFKA_BOOTSTRAP_SERVERS={status.bootstrap}" if status.running else "not running")
        return 0 if status.running else 3
    except LocalKafkaError as exc:
        print(f"keystate kafka: {exc}", file=sys.stderr)
        return 1
