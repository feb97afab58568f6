"""A deadline for a request's headers, which uvicorn does not have.

uvicorn closes a connection idle between requests (`timeout_keep_alive`), but not one that opened and
sent nothing, nor one that began a request and stalled or trickles its headers a byte at a time: each
such connection holds a socket and a file descriptor for good (300 half-sent requests were all still
open 20 s later). Its options bound sizes, not time, and there is no hook for it, so `serve` runs
uvicorn's own h11 protocol with a timer: started when the connection opens, or when the first bytes of
its next request arrive; stopped once the request's headers are complete (a slow body is the app's to
bound); on expiry the connection is closed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline of `header_timeout_s` for each request's headers."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        """Start the timer while a request's headers are awaited (h11: the client is IDLE, no request
        yet) and none runs; stop it otherwise."""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)
        else:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (`http=`), with its deadline."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
