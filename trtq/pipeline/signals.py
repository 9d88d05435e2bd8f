"""SIGINT and SIGTERM as a clean stop: the running step is abandoned (its temporary files removed by
the ``finally`` blocks on the way out), completed steps stay in the manifest.

A CI system cancels a job with SIGTERM, which by default kills Python on the spot. Here it raises
:class:`Interrupted` (a :class:`KeyboardInterrupt`) in the main thread instead, like Ctrl-C. While
the pipeline moves a finished step's files into place and rewrites the manifest it holds signals
back (:meth:`SignalGuard.deferred`), so a step is either fully recorded or not at all.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """Installs the handlers for its ``with`` block (main thread only) and restores the old ones."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._depth = 0
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self._depth:
            self._pending = self._pending or signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals back for the block; one that arrived meanwhile is raised right after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)
