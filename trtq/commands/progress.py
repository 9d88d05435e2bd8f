"""The progress of the commands that run the model over data (calibrate, quantize, evaluate, sensitivity): a bar on
a terminal, a line at each quarter in a log."""

from __future__ import annotations

import sys
import time

import click

from trtq.messages import quarter_progress


def run_with_progress(run, total: int | None, quiet: bool, label: str = "calibrating"):
    """``run(progress=...)`` (a partial of a library call that reports samples done) with a progress bar on stderr."""
    if quiet:
        return run()
    started = time.perf_counter()
    done = 0

    def rate() -> str:
        elapsed = time.perf_counter() - started
        return f"{done / elapsed:.0f} samples/s" if elapsed > 0 and done else ""

    if total is None:  # a data-loader script: no length to show a bar against, count instead
        stderr = sys.stderr

        def count(samples: int) -> None:
            nonlocal done
            done += samples
            if stderr.isatty():
                click.echo(f"\r{label}: {done} samples  {rate()}", err=True, nl=False)

        result = run(progress=count)
        if stderr.isatty():
            click.echo("", err=True)
        return result

    if not sys.stderr.isatty():  # a log (CI, a pipe): a line at each quarter, not a bar drawn over itself
        return run(progress=quarter_progress(label, total, lambda line: click.echo(line, err=True)))

    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_eta=True, show_pos=True, item_show_func=lambda _: rate()) as bar:
        def advance(samples: int) -> None:
            nonlocal done
            done += samples
            bar.update(samples, done)

        return run(progress=advance)


def task_progress(label: str, quiet: bool):
    """``progress(done, total)`` for work counted in tasks (``--ray``): a line updated in place on a terminal,
    one final line otherwise; nothing when quiet."""
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        if quiet:
            return
        elapsed = time.perf_counter() - started
        eta = f"  eta {elapsed / done * (total - done):.0f} s" if 0 < done < total else ""
        line = f"{label}: {done}/{total} tasks  {elapsed:.1f} s{eta}"
        if sys.stderr.isatty():
            click.echo(f"\r{line}", err=True, nl=done >= total)
        elif done >= total:
            click.echo(line, err=True)

    return report
