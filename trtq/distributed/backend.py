"""Connecting to Ray, running tasks with progress and cancellation, and turning task failures into one line.

``ADDRESS`` is what ``ray.init(address=...)`` accepts (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``);
``local`` starts a Ray instance inside this process with one worker per core (``RAY_TMPDIR``, when set,
holds its session files) and shuts it down at the end. When Ray is already initialised in this process
(a notebook, a test), that instance is used and left running.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from trtq.errors import TrtqError, first_line

INSTALL_HINT = "pip install 'trtq[ray]'"


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise TrtqError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def local_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def init_kwargs(address: str, num_cpus: int | None = None) -> dict[str, Any]:
    """The ``ray.init`` arguments for ``address`` (``local`` or a cluster address)."""
    if not address or not address.strip():
        raise TrtqError("--ray needs an address: local, auto, HOST:PORT or ray://HOST:PORT")
    address = address.strip()
    common: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address == "local":
        kwargs = {**common, "address": "local", "num_cpus": num_cpus or local_cores(), "include_dashboard": False}
        temp = os.environ.get("RAY_TMPDIR")
        if temp:
            kwargs["_temp_dir"] = os.path.abspath(temp)
        return kwargs
    if address.startswith("ray://"):  # Ray Client takes fewer options
        return {"address": address, "log_to_driver": True}
    return {**common, "address": address}


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray connected for the block: yields the ``ray`` module; shuts down only what it started."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = init_kwargs(address, num_cpus)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all one line
        raise TrtqError(f"cannot start or reach Ray at '{address}': {type(exc).__name__}: "
                        f"{first_line(exc, 'no detail')}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray) -> int:
    """CPUs the cluster offers (at least 1)."""
    try:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:
        return 1


def cluster_gpus(ray) -> int:
    """GPUs the cluster offers (0 when none, or when Ray cannot say)."""
    try:
        return int(ray.cluster_resources().get("GPU", 0))
    except Exception:
        return 0


def task_error(exc: BaseException) -> TrtqError:
    """A Ray task failure as one line: the task's own TrtqError message, else its exception's type and first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TrtqError):
        return TrtqError(f"on a Ray worker: {first_line(cause)}")
    if cause is not None:
        return TrtqError(f"a Ray task failed: {type(cause).__name__}: {first_line(cause, 'no detail')}")
    return TrtqError(f"a Ray task failed: {type(exc).__name__}: {first_line(exc, 'no detail')}")


def count_done(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int, Any], None]:
    """An ``on_done`` for :func:`gather` that reports ``progress(tasks finished, total)``."""
    finished = 0

    def done(_index: int, _value: Any) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, total)

    return done


def gather(ray, refs: Sequence[Any], on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """The results of ``refs`` in their order; ``on_done(index, result)`` as each finishes (in completion order).

    A failing task cancels the others and raises one line (:func:`task_error`); Ctrl-C cancels them too
    (best effort) and re-raises, so the caller writes nothing.
    """
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise task_error(exc) from None
                results[index[ref]] = value
                if on_done is not None:
                    on_done(index[ref], value)
    except BaseException:
        cancel_all(ray, pending)
        raise
    return results


CANCEL_ROUNDS = 6
CANCEL_WAIT_S = 0.5


def cancel_all(ray, refs: Sequence[Any]) -> None:
    """Cancel ``refs``, re-sending the cancel to those still unresolved after a short wait.

    Ray drops a cancel that lands while a task is being handed to a worker but has not started
    (ray-project/ray#24359): the task then runs to its end and holds its CPU. Cancelled refs resolve at once
    (to ``TaskCancelledError``), so asking again for those still pending costs nothing when the first cancel
    took and at most ``CANCEL_ROUNDS * CANCEL_WAIT_S`` seconds when Ray keeps dropping it.
    """
    pending = list(refs)
    for _ in range(CANCEL_ROUNDS):
        if not pending:
            return
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # actor tasks cannot be force-cancelled
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
        with contextlib.suppress(Exception):
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)


def worker_host() -> str:
    return socket.gethostname()
