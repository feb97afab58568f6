"""What the server's log keeps: never what a user typed, and not one line per request for a failure anyone
can repeat at will.

- `LogLimiter`: at most one record per kind per minute, the next one saying how many were left out
  (rejected IAP assertions, refused sign-ins).
- Gradio prints the traceback of a failed event itself (`traceback.print_exc()` to stderr, with no
  logger and no option to turn it off), and its text can carry the event's inputs: an event with too
  few inputs raises "... Received inputs: [<the typed text>]", a value that does not preprocess is
  quoted in the error. `install_server_logging` has those modules print through `GradioTracebacks`
  instead: one record (logger `gradio.queueing`, `gradio.routes`, ...) with the exception's type and
  where it was raised, never its text, at most once a minute per kind. A refusal a handler raised
  (`gr.Error`, shown to the user) is logged at INFO, anything else at ERROR.
- uvicorn logs an exception that escaped the app as "Exception in ASGI application" with its traceback
  (`uvicorn.error`). `AsgiErrors` keeps those without the exceptions' text (it can quote the request),
  once a minute per kind; and an HTTP error raised after its response had started (Gradio's event
  stream for a tab it does not know: a 404 it can only send by closing the stream, and a 130-line
  traceback each time) is one short line, once a minute.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)


class LogLimiter:
    """Logs a kind of record at most once per `period_s`; the next one logged says how many were left
    out since, and `flush` says it when no next one comes."""

    MAX_KINDS = 1000  # kinds are a small fixed set; bound them anyway

    def __init__(
        self,
        logger: logging.Logger,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}  # kind -> when it was last logged
        self._skipped: dict[str, tuple[int, int]] = {}  # kind -> (left out since, their level)
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, detail: str = "", *args: Any) -> bool:
        """'kind: detail % args' unless `kind` was logged within the period (then it is counted);
        True when it was logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.period_s:
                skipped, _ = self._skipped.get(kind, (0, level))
                self._skipped[kind] = (skipped + 1, level)
                return False
            skipped, _ = self._skipped.pop(kind, (0, level))
            if len(self._last) >= self.MAX_KINDS:
                self._last.clear()
            self._last[kind] = now
        more = f" (and {skipped} more in the last {self.period_s:.0f} s)" if skipped else ""
        self.logger.log(level, "%s%s%s", kind, f": {detail % args}" if detail else "", more, stacklevel=2)
        return True

    def warning(self, what: str, reason: str) -> None:
        """'what: reason', once a minute per reason."""
        self.log(logging.WARNING, f"{what}: {reason}")

    def flush(self) -> None:
        """How many were left out, for each kind whose period is over (no next one may ever come)."""
        now = self.clock()
        with self._lock:
            due = [kind for kind in self._skipped if now - self._last.get(kind, now) >= self.period_s]
            counts = {kind: self._skipped.pop(kind) for kind in due}
            for kind in due:
                self._last[kind] = now
        for kind, (skipped, level) in counts.items():
            self.logger.log(
                level, "%s: %d more in the last %.0f s", kind, skipped, self.period_s, stacklevel=2
            )


# --- exceptions, without their text ------------------------------------------------------------
def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or during, the first cause first (as a traceback prints)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.insert(0, current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def where(exc: BaseException) -> str:
    """Where `exc` was raised: 'gradio/blocks.py:2064 in validate_inputs' (the path from its package)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "(no traceback)"
    frame = frames[-1]
    path = frame.filename
    for root in sorted((p for p in sys.path if p), key=len, reverse=True):
        if path.startswith(root.rstrip("/") + "/"):
            path = path[len(root.rstrip("/")) + 1 :]
            break
    return f"{path}:{frame.lineno} in {frame.name}"


def without_text(exc: BaseException) -> str:
    """`exc`'s traceback as Python prints it, each exception's text left out (it can quote what a user
    sent): the frames (file, line, function, the line of code) and the exceptions' types."""
    parts: list[str] = []
    for i, each in enumerate(_chain(exc)):
        if i:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if each.__cause__ is not None
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(traceback.extract_tb(each.__traceback__)))
        parts.append(f"{_name(each)} (its text is left out of the log)\n")
    return "".join(parts).rstrip("\n")


def kind_of(exc: BaseException) -> str:
    """A failure's kind, for `LogLimiter`: its type and where it was raised."""
    return f"{_name(exc)} at {where(exc)}"


# --- Gradio's printed tracebacks ---------------------------------------------------------------
class GradioTracebacks:
    """Stands in for the `traceback` module inside Gradio's modules that run events: `print_exc()`
    logs the exception being handled without its text (see the module docstring); every other name
    is the real module's."""

    def __init__(self, limiter: LogLimiter) -> None:
        self.limiter = limiter

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    def print_exc(self, limit: int | None = None, file: Any = None, chain: bool = True) -> None:
        exc = sys.exc_info()[1]
        if exc is None:
            return
        from gradio.exceptions import Error

        if isinstance(exc, Error):  # a handler's refusal, shown to the user: not the server's failure
            self.limiter.log(logging.INFO, f"an event was refused ({_name(exc)} at {where(exc)})")
        else:
            self.limiter.log(logging.ERROR, f"an event failed: {kind_of(exc)}", "%s", without_text(exc))


# --- uvicorn's "Exception in ASGI application" -------------------------------------------------
class AsgiErrors(logging.Filter):
    """On `uvicorn.error`: an exception that escaped the app logged without its text, once a minute per
    kind; an HTTP error raised once its response had started as one short line (see the module
    docstring)."""

    def __init__(self, errors: LogLimiter, late: LogLimiter) -> None:
        super().__init__()
        self.errors = errors  # uvicorn's logger: it logs only warnings and worse
        self.late = late

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        status = _status_after_start(exc)
        if status is not None:
            self.late.log(
                logging.INFO,
                f"a response ended with HTTP {status} raised after it had started",
                "its connection was closed (Gradio's event stream for a tab it does not know, say)",
            )
            return False
        self.errors.log(record.levelno, f"{record.getMessage()}: {kind_of(exc)}", "%s", without_text(exc))
        return False  # logged above in its place, or left out and counted


def _status_after_start(exc: BaseException) -> int | None:
    """The status of an HTTPException that reached Starlette once its response had started (it says
    so with a RuntimeError raised from it), else None."""
    from starlette.exceptions import HTTPException

    cause = exc.__cause__
    if isinstance(exc, RuntimeError) and isinstance(cause, HTTPException) and "already started" in str(exc):
        return cause.status_code
    return None


# --- installed at server start -----------------------------------------------------------------
ASGI_ERRORS = AsgiErrors(LogLimiter(logging.getLogger("uvicorn.error")), LogLimiter(log))


def install_server_logging() -> None:
    """Gradio's event tracebacks and uvicorn's app errors logged as the module docstring says; call it
    before the server starts (idempotent)."""
    import gradio.queueing
    import gradio.route_utils
    import gradio.routes

    patched: list[ModuleType] = []
    for module in (gradio.queueing, gradio.routes, gradio.route_utils):
        if getattr(module, "traceback", None) is traceback:
            shim = GradioTracebacks(LogLimiter(logging.getLogger(module.__name__)))
            module.traceback = shim  # type: ignore[attr-defined]
        if isinstance(getattr(module, "traceback", None), GradioTracebacks):
            patched.append(module)
    if not patched:
        log.warning("Gradio's event tracebacks could not be taken over: they may print what users typed")
    logging.getLogger("uvicorn.error").addFilter(ASGI_ERRORS)
