"""The daemon's helper threads (heartbeats, prefetch, status, policy watching) share one shape."""

from __future__ import annotations

import threading


class Background:
    """A daemon thread running `_run`, whose loop ends once `_closed` is set by `close()`."""

    def __init__(self, name: str) -> None:
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        raise NotImplementedError
