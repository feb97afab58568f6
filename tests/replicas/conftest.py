"""Several `hybrid-chat serve` replicas behind a real balancer, as in the cluster: the harness.

What a test gets (`replica_cluster`, or `start_cluster` for its own settings):
- two or three replica processes (`Replica`), each a `hybrid-chat serve` as the Deployment runs it, on
  one Firestore emulator (the memory every replica shares), Gemma answered by a small OpenAI-shaped
  server (tests/support/fault_server.py's "echo": fast, and the answer says what was asked);
- Debian's haproxy in front (`Balancer`): the APIs (`/api/`, `/v1/`) round robin, the page sticky by a
  cookie haproxy inserts (`cookie SRV insert`: GKE's GENERATED_COOKIE), every replica health-checked on
  `/readyz` as GKE's load balancer and the kubelet do. No `option redispatch` and no `retry-on`: a
  replica that stops before the balancer noticed shows as failed requests, as it would in the cluster;
- `Replica.sigterm()`, `.wait_exited()`, `.start()` and `Cluster.restart(replica)` (SIGTERM, wait for
  the exit, start again on the same port, wait until the balancer sends to it again): a rolling update.

The health checks every `CHECK_INTER_S` with `CHECK_FALL` failures to mark a replica down; replicas run
with a drain period (`DRAIN_S`) longer than that, as deploy/base/chat-deployment.yaml matches it to its
readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.fault_server import FaultServer, fault_server
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator
from tests.support.server import free_port

pytestmark = pytest.mark.integration

DATABASE = "replicas-db"
CHECK_INTER_S = 1.0  # haproxy's health check interval
CHECK_FALL = 2  # failed checks before a replica is down (the readiness probe's failureThreshold)
CHECK_RISE = 2
CHECK_TIMEOUT_S = 3.0  # a check may take this long (the readiness probe's timeoutSeconds)
# Longer than the balancer needs to notice, a slow check (a busy machine) included, with a margin.
DRAIN_S = (CHECK_INTER_S + CHECK_TIMEOUT_S) * CHECK_FALL + 1
START_TIMEOUT_S = 120  # 2 cores shared with other tests: a replica's start-up can take 30 s or more


def exited(pid: int) -> bool:
    """Has the process ended (gone, or a zombie not reaped yet)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


@dataclass
class Replica:
    """One `hybrid-chat serve` process on a fixed port (kept across restarts, as haproxy names it)."""

    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    stopped_in_s: list[float] = field(default_factory=list)  # SIGTERM to exit, per stop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
        env.update({"GRADIO_ANALYTICS_ENABLED": "False", **self.env})
        exe = str(Path(sys.executable).with_name("hybrid-chat"))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.name} not ready in {timeout} s; see {self.log_path}"
            # Ready, and its warm-up over: the embedded Gemini stand-in (a llama.cpp server; none runs in
            # the cluster) stopped right after it started holds the exit for tens of seconds.
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(self.url + "/readyz", timeout=2).status_code == 200
                    and "Vertex AI stand-in listening" in self.log_path.read_text()
                ):
                    return
            time.sleep(0.2)

    def sigterm(self) -> float:
        """Send SIGTERM (what the kubelet does); returns when it was sent (monotonic)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def wait_exited(self, sent_at: float, timeout: float = 120) -> float:
        """Seconds from `sent_at` (the SIGTERM) to the process's exit."""
        assert self.proc is not None
        self.proc.wait(timeout)
        took = time.monotonic() - sent_at
        self.stopped_in_s.append(took)
        return took

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Balancer:
    """Debian's haproxy in front of the replicas (the module docstring says how it balances)."""

    def __init__(self, replicas: list[Replica], work_dir: Path) -> None:
        self.port = free_port()
        self.replicas = replicas
        self.config_path = work_dir / "haproxy.cfg"
        self.log_path = work_dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        check = f"check inter {int(CHECK_INTER_S * 1000)} fall {CHECK_FALL} rise {CHECK_RISE}"
        api = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} {check}" for r in self.replicas)
        page = "\n".join(
            f"    server {r.name} 127.0.0.1:{r.port} {check} cookie {r.name}" for r in self.replicas
        )
        return f"""global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 10s
    timeout check {int(CHECK_TIMEOUT_S)}s
    option httpchk GET /readyz
    http-check expect status 200

frontend chat
    bind 127.0.0.1:{self.port}
    acl api path_beg /api/ /v1/
    use_backend apis if api
    default_backend page

# The APIs: every request to the next replica (API clients need no affinity).
backend apis
    balance roundrobin
    http-response set-header X-Served-By %[srv_name]
{api}

# The page: Gradio keeps a tab's state in one process, so a browser stays on the replica that served
# it, by a cookie the balancer inserts (GKE: BackendConfig sessionAffinity GENERATED_COOKIE).
backend page
    balance roundrobin
    cookie SRV insert indirect nocache httponly
    http-response set-header X-Served-By %[srv_name]
{page}
"""

    def start(self) -> None:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.config_path.write_text(self.config())
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [haproxy, "-db", "-f", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "haproxy did not start"
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.url + "/healthz", timeout=1)
                return
            time.sleep(0.1)

    def wait_serving(self, replica: Replica, timeout: float = 30) -> None:
        """Until the balancer sends API requests to `replica` again (its health checks passed)."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            # /api/ requests go round robin: within len(replicas) of them each replica up answers one.
            for _ in self.replicas:
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(self.url + "/api/chat", timeout=2)  # 405: only who answered matters
                    seen.add(r.headers.get("x-served-by", ""))
            if replica.name in seen:
                return
            time.sleep(CHECK_INTER_S / 2)
        raise AssertionError(f"the balancer did not send to {replica.name} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Cluster:
    """The balancer's URL, the replicas, and the shared parts under them."""

    url: str
    replicas: list[Replica]
    balancer: Balancer
    emulator: FirestoreEmulator
    gemma: FaultServer

    def restart(self, replica: Replica) -> float:
        """A rolling update's step: SIGTERM, wait for the exit, start again, wait until the balancer
        sends to it. Returns the seconds from SIGTERM to exit."""
        took = replica.wait_exited(replica.sigterm())
        replica.start()
        replica.wait_ready()
        self.balancer.wait_serving(replica)
        return took

    def messages(self, conversations: set[str], user: str = "local") -> dict[str, list[tuple[str, str]]]:
        """Each of `user`'s `conversations` as stored, (type, text) per message, read from Firestore."""
        from graph.memory import make_store
        from graph.settings import Settings

        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            memory="firestore",
            firestore_project=self.emulator.project,
            firestore_database=DATABASE,
        )

        async def read() -> dict[str, list[tuple[str, str]]]:
            store = make_store(settings)
            try:
                return {
                    sid: [(m.type, m.text) for m in await store.history(sid, user).aget_messages()]
                    for sid in sorted(conversations)
                }
            finally:
                await store.aclose()

        saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
        os.environ["FIRESTORE_EMULATOR_HOST"] = self.emulator.host  # the client reads it when it starts
        try:
            return asyncio.run(read())
        finally:
            if saved is None:
                os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
            else:
                os.environ["FIRESTORE_EMULATOR_HOST"] = saved


@pytest.fixture(scope="session")
def replicas_emulator() -> Iterator[FirestoreEmulator]:
    with firestore_emulator(set_env=False) as emu:
        yield emu


@contextlib.contextmanager
def running_cluster(
    emulator: FirestoreEmulator, work_dir: Path, count: int = 3, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """`count` replicas (each with the extra `env`: a redis URL, sign-in users, a session secret...)
    on `emulator`'s database (wiped first), and the balancer; all stopped at the end."""
    emulator.wipe(DATABASE)
    replicas: list[Replica] = []
    balancer: Balancer | None = None
    with fault_server("echo") as gemma:
        base = {
            "FIRESTORE_EMULATOR_HOST": emulator.host,
            "GOOGLE_CLOUD_PROJECT": emulator.project,
            "HYBRID_CHAT_MEMORY": "firestore",
            "HYBRID_CHAT_FIRESTORE_PROJECT": emulator.project,
            "HYBRID_CHAT_FIRESTORE_DATABASE": DATABASE,
            "HYBRID_CHAT_GEMMA_BASE_URL": gemma.base_url,
            "HYBRID_CHAT_DEFAULT_MODEL": "gemma",
            "HYBRID_CHAT_ATTACHMENTS_PATH": str(work_dir / "attachments"),
            "HYBRID_CHAT_LOCAL_MODEL_THREADS": "1",
            "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": "0",
            "HYBRID_CHAT_DRAIN_S": str(DRAIN_S),
            "HYBRID_CHAT_SHUTDOWN_GRACE_S": "10",
            **(env or {}),
        }
        try:
            for i in range(count):  # pick a port, start, then pick the next (FIELD-NOTES)
                replica = Replica(f"r{i}", free_port(), base, work_dir)
                replica.start()
                replicas.append(replica)
            for replica in replicas:
                replica.wait_ready()
            balancer = Balancer(replicas, work_dir)
            balancer.start()
            for replica in replicas:
                balancer.wait_serving(replica)
            yield Cluster(balancer.url, replicas, balancer, emulator, gemma)
        finally:
            if balancer is not None:
                balancer.stop()
            for replica in replicas:
                if replica.proc is not None and replica.proc.poll() is None:
                    replica.proc.terminate()
            for replica in replicas:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if replica.proc is not None:
                        replica.proc.wait(30)
                replica.kill()


@pytest.fixture
def start_cluster(replicas_emulator: FirestoreEmulator, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`start_cluster(count=3, env={...})`: a cluster of one's own (`running_cluster`), stopped when
    the test ends."""
    with contextlib.ExitStack() as stack:

        def start(count: int = 3, env: dict[str, str] | None = None) -> Cluster:
            return stack.enter_context(running_cluster(replicas_emulator, tmp_path, count, env))

        yield start


@pytest.fixture(scope="module")
def replica_cluster(
    replicas_emulator: FirestoreEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Replicas behind the balancer (two in the suite: the fewest that exercise every cross-replica path,
    and each one's restart is ~25 s of the suite's time; REPLICAS=3 for the figures), local sign-in
    (everyone is the local user), shared by the module's tests (start-up is most of their time)."""
    count = int(os.environ.get("REPLICAS", "2"))
    with running_cluster(replicas_emulator, tmp_path_factory.mktemp("cluster"), count) as cluster:
        yield cluster
