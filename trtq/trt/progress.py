"""Progress for long engine builds.

Where TensorRT has ``trt.IProgressMonitor`` (10.x and 11.x), :func:`progress_monitor_class` makes a
real subclass of it: TensorRT reports its phases and steps and trtq draws one status line on a
terminal (or one line per top-level phase in a log). Otherwise :class:`Spinner` shows the elapsed
time. Both can cancel the build: Ctrl-C sets :attr:`BuildProgress.cancelled` and the next
``step_complete`` answers ``False``, which makes TensorRT stop cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import TextIO


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:4.1f}s"


class BuildProgress:
    """The Python half of trtq's progress monitor: phase bookkeeping and rendering, thread-safe
    (TensorRT calls it from its own threads)."""

    def _setup(self, stream: TextIO | None = None, interactive: bool | None = None, clock=time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.clock = clock
        self.started = clock()
        self.cancelled = False
        self.phases: dict[str, list] = {}  # name -> [parent, steps done, steps total]
        self.history: list[str] = []  # top-level phases, in order (recorded in the manifest)
        self._lock = threading.Lock()
        self._line_width = 0

    # TensorRT's IProgressMonitor callbacks -------------------------------------------------------

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            self.phases[phase_name] = [parent_phase, 0, int(num_steps)]
            if not parent_phase:
                self.history.append(phase_name)
                if not self.interactive:
                    self._write_line(f"trtq: [{_elapsed(self.clock() - self.started)}] {phase_name}")
            self._render()

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            if phase_name in self.phases:
                self.phases[phase_name][1] = int(step) + 1
            self._render()
            return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self.phases.pop(phase_name, None)
            self._render()

    # rendering ----------------------------------------------------------------------------------

    def status(self) -> str:
        """``[ 12.3s] Building engine › Tactic selection 3/40`` for the innermost open phases."""
        parts = [f"{name} {done}/{total}" if total > 1 else name for name, (_, done, total) in self.phases.items()]
        return f"[{_elapsed(self.clock() - self.started)}] " + (" › ".join(parts[-3:]) if parts else "building")

    def _render(self) -> None:
        if not self.interactive:
            return
        text = self.status()[:119]
        self.stream.write("\r" + text.ljust(self._line_width))
        self.stream.flush()
        self._line_width = len(text)

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Clear the status line so that the next message starts clean."""
        with self._lock:
            if self.interactive and self._line_width:
                self.stream.write("\r" + " " * self._line_width + "\r")
                self.stream.flush()
                self._line_width = 0


class PlainProgress(BuildProgress):
    """The same bookkeeping without a TensorRT base class, for tests (a TensorRT without
    ``IProgressMonitor`` gets a :class:`Spinner` instead)."""

    def __init__(self, **options) -> None:
        self._setup(**options)


def progress_monitor_class(trt: ModuleType) -> type:
    """``TrtqProgressMonitor``: :class:`BuildProgress` on the real ``trt.IProgressMonitor``."""
    base = trt.IProgressMonitor

    def __init__(self, **options) -> None:
        base.__init__(self)  # pybind11 needs the C++ half constructed
        BuildProgress._setup(self, **options)

    return type("TrtqProgressMonitor", (BuildProgress, base), {"__init__": __init__, "__module__": __name__})


class Spinner:
    """Elapsed time on a terminal while TensorRT builds without a progress monitor."""

    frames = "|/-\\"

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None, interval: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.interval = interval
        self.started = time.monotonic()
        self.cancelled = False
        self.history: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trtq-spinner", daemon=True)

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(self.interval):
            text = f"{self.frames[frame % 4]} building engine [{_elapsed(time.monotonic() - self.started)}]"
            self.stream.write("\r" + text)
            self.stream.flush()
            frame += 1

    def __enter__(self) -> Spinner:
        if self.interactive:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()

    def finish(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()


@contextlib.contextmanager
def cancel_on_interrupt(progress) -> Iterator[None]:
    """While TensorRT builds, Ctrl-C asks it to stop (``step_complete`` returns False) instead of
    being ignored until the build ends; a second Ctrl-C interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum, frame) -> None:
        if progress.cancelled:
            raise KeyboardInterrupt
        progress.cancelled = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
