"""What trtq tells the user besides errors: one line each on stderr, never mixed with a command's output.

Plain ``sys.stderr`` (looked up at each call, so a test runner's capture sees it), not click: library
modules warn through here too, and only the CLI layer imports click.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _say(line: str) -> None:
    """Write one line to stderr and flush it, as ``click.echo(..., err=True)`` did: a stream that cannot
    encode a character gets a replacement character, not an exception."""
    stream = sys.stderr
    if stream is None:  # no standard streams (pythonw)
        return
    text = line + "\n"
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "replace").decode(encoding))
    stream.flush()


def warn(message: str) -> None:
    """Something the user should look at; the work goes on."""
    _say(f"trtq: warning: {message}")


def note(message: str) -> None:
    """Something trtq did on the user's behalf (an opset upgrade, a default it chose)."""
    _say(f"trtq: note: {message}")


def quarter_progress(label: str, total: int | None, say: Callable[[str], None],
                     unit: str = "samples") -> Callable[[int], None]:
    """``progress(done)`` that says a line at each quarter of ``total`` ``unit``, with the time so far and
    left, through ``say``: what a long step without a terminal bar (a log, a pipeline step) shows. Without a
    total it says nothing."""
    started, done, said = time.perf_counter(), 0, 0

    def progress(samples: int) -> None:
        nonlocal done, said
        done += samples
        if not total:
            return
        quarter = min(4, 4 * done // total)
        if quarter > said:
            said = quarter
            elapsed = time.perf_counter() - started
            left = f", about {elapsed / done * (total - done):.0f} s left" if done < total else ""
            say(f"{label}: {min(done, total)}/{total} {unit} ({100 * min(done, total) // total} %), "
                f"{elapsed:.1f} s{left}")

    return progress
