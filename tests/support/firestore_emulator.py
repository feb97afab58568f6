"""Start the REAL Cloud Firestore emulator (the jar shipped with gcloud) for a test session.

Java is started directly, not through `gcloud emulators firestore start`: the gcloud/bash wrapper leaves
java running when it is killed. The process gets its own process group so that stopping it also stops
anything it spawned, and its chatter goes to a temporary log file (kept on failure for diagnosis), never
to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
DEFAULT_PROJECT = "demo-test"


class EmulatorUnavailable(RuntimeError):
    """The emulator cannot be started here (no java, no jar) or did not become ready."""


def find_jar() -> Path:
    """The emulator jar: `$FIRESTORE_EMULATOR_JAR`, else under the gcloud SDK root."""
    env = os.environ.get("FIRESTORE_EMULATOR_JAR")
    candidates: list[Path] = [Path(env)] if env else []
    roots: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        # .../google-cloud-sdk/bin/gcloud -> the SDK root, without paying for `gcloud info` (~1 s).
        roots.append(Path(os.path.realpath(gcloud)).parent.parent)
    roots += [Path("/usr/lib/google-cloud-sdk"), Path("/usr/share/google-cloud-sdk")]
    candidates += [r / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" for r in roots]
    for jar in candidates:
        if jar.is_file():
            return jar
    raise EmulatorUnavailable("cloud-firestore-emulator.jar not found (install the gcloud component)")


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(method: str, url: str, timeout: float = 2.0) -> str:
    req = urllib.request.Request(url, method=method)  # noqa: S310 - a local http:// URL we built
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        return resp.read().decode("utf-8", "replace")


@dataclass
class FirestoreEmulator:
    """A running emulator: `host` ("127.0.0.1:PORT") for FIRESTORE_EMULATOR_HOST, `project` to use."""

    host: str
    project: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _paused: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    def wipe(self, database: str = "(default)") -> None:
        """Delete every document of one database (the emulator's reset endpoint; milliseconds)."""
        wipe_database(self.host, database, self.project)

    def pause(self) -> None:
        """SIGSTOP the emulator: connections stay open but nothing answers (a network partition, a hang)."""
        os.killpg(self.process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`; the data is intact."""
        os.killpg(self.process.pid, signal.SIGCONT)
        self._paused = False

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop java and its whole process group; SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._paused:
                self.resume()
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def wipe_database(host: str, database: str = "(default)", project: str = DEFAULT_PROJECT) -> None:
    """Delete all documents of `database` in the emulator at `host`."""
    _http("DELETE", f"http://{host}/emulator/v1/projects/{project}/databases/{database}/documents", 10.0)


def start_emulator(
    project: str = DEFAULT_PROJECT, start_timeout: float = 30.0, log_dir: str | None = None
) -> FirestoreEmulator:
    """Start java on a free port and wait until `GET /` answers `Ok`."""
    java = shutil.which("java")
    if java is None:
        raise EmulatorUnavailable("java not found")
    jar = find_jar()
    port = free_port()
    fd, log_name = tempfile.mkstemp(prefix="firestore-emulator-", suffix=".log", dir=log_dir)
    log = os.fdopen(fd, "wb")
    cmd = [
        java,
        "-Duser.language=en",
        "-cp",
        str(jar),
        MAIN_CLASS,
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    emu = FirestoreEmulator(host=f"127.0.0.1:{port}", project=project, process=proc, log_path=Path(log_name))
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorUnavailable(f"emulator exited with {proc.returncode}:\n{emu.log_tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if _http("GET", emu.base_url + "/", 1.0).strip() == "Ok":
                return emu
        time.sleep(0.1)
    emu.stop()
    raise EmulatorUnavailable(f"emulator not ready after {start_timeout:.0f} s:\n{emu.log_tail()}")


@contextlib.contextmanager
def firestore_emulator(
    project: str = DEFAULT_PROJECT, *, set_env: bool = True
) -> Iterator[FirestoreEmulator]:
    """Run an emulator for the duration of the block.

    With `set_env`, FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT point at it inside the block (and are
    restored after), so Firestore clients created there talk to it without credentials.
    """
    emu = start_emulator(project)
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    ok = False
    try:
        if set_env:
            os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
            os.environ["GOOGLE_CLOUD_PROJECT"] = project
        yield emu
        ok = True
    finally:
        if set_env:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        emu.stop()
        if ok:
            with contextlib.suppress(OSError):
                emu.log_path.unlink()
