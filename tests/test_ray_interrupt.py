"""Ctrl-C during ``--ray``: the KeyboardInterrupt reaches the command (exit 130, "trtq: interrupted"), nothing is
written, and the Ray work still pending is cancelled, so the cluster is free again at once (a real local Ray
instance; the KeyboardInterrupt is raised from the progress callback, i.e. inside the driver's wait for results,
where a Ctrl-C lands in practice)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import REPO
from tests.test_cli_calibrate import run

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'trtq[ray]')")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"
SLOW_S = 60.0


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_an_interrupt_cancels_the_pending_tasks():
    from trtq.distributed.backend import gather

    task = ray.remote(num_cpus=1)(nap)
    refs = [task.remote(0.0), task.remote(SLOW_S), task.remote(SLOW_S)]  # two CPUs: one slow task runs, one waits

    def interrupt(_index, _value):
        raise KeyboardInterrupt

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        gather(ray, refs, interrupt)
    for ref in refs[1:]:
        with pytest.raises(ray.exceptions.RayError) as raised:  # cancelled, not left to run its minute
            ray.get(ref, timeout=30)
        assert not isinstance(raised.value, ray.exceptions.GetTimeoutError), "the task was not cancelled"
    assert time.perf_counter() - started < SLOW_S / 2
    assert ray.get(task.remote(0.5), timeout=30) == 0.5  # the workers are free again


class DroppingRay:
    """Ray's cancel as it behaves in a race (ray-project/ray#24359): the first cancel of each ref is lost."""

    def __init__(self, refs):
        self.cancels = {ref: 0 for ref in refs}
        self.waits = 0

    def cancel(self, ref, force=False):
        self.cancels[ref] += 1

    def wait(self, refs, num_returns, timeout):
        self.waits += 1
        pending = [ref for ref in refs if self.cancels[ref] < 2]
        return [ref for ref in refs if ref not in pending], pending


def test_a_dropped_cancel_is_sent_again():
    from trtq.distributed.backend import cancel_all

    fake = DroppingRay(["a", "b"])
    cancel_all(fake, ["a", "b"])
    assert fake.cancels == {"a": 2, "b": 2} and fake.waits == 2


def test_cancelling_gives_up_on_a_task_ray_never_cancels():
    from trtq.distributed import backend

    fake = DroppingRay(["a"])
    fake.cancel = lambda ref, force=False: None  # never takes
    backend.cancel_all(fake, ["a"])
    assert fake.waits == backend.CANCEL_ROUNDS


def test_ctrl_c_during_calibrate_ray_writes_nothing(tmp_path, monkeypatch):
    from trtq.commands import calibrate as command

    def interrupted(run, total, quiet, label="calibrating"):  # Ctrl-C as the first shard's result comes in
        def progress(_samples):
            raise KeyboardInterrupt

        return run(progress=progress)

    monkeypatch.setattr(command, "run_with_progress", interrupted)
    result = run("calibrate", str(MODEL), "--data", str(DIGITS), "--max-samples", "60", "--calibrator", "entropy2",
                 "--ray", "local", "--cache", str(tmp_path / "m.cache"), "--json", str(tmp_path / "m.json"),
                 "--save-stats", str(tmp_path / "m.npz"))
    assert result.exit_code == 130, result.output
    assert "trtq: interrupted" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_sensitivity_ray_writes_nothing(tmp_path, monkeypatch):
    from trtq.cache import cache_from_amax, write_cache
    from trtq.calibrate import calibrate
    from trtq.commands import progress as progress_module
    from trtq.data import open_batches
    from trtq.model import load_model

    model = load_model(MODEL)
    amax = calibrate(model, open_batches(model, str(DIGITS), max_samples=40), "entropy2").amax
    write_cache(tmp_path / "m.cache", cache_from_amax(amax, "entropy2"))
    seen = []

    def interrupting(label, quiet):
        def report(done, total):
            seen.append((done, total))
            raise KeyboardInterrupt

        return report

    monkeypatch.setattr(progress_module, "task_progress", interrupting)
    out = tmp_path / "out"
    out.mkdir()
    result = run("sensitivity", str(MODEL), "--cache", str(tmp_path / "m.cache"), "--data", str(DIGITS),
                 "--max-samples", "24", "--target-sqnr", "40", "--ray", "local", "--json", str(out / "r.json"),
                 "--keep-out", str(out / "keep.txt"), "--html", str(out / "r.html"))
    assert result.exit_code == 130, result.output
    assert "trtq: interrupted" in result.output and "Traceback" not in result.output
    assert seen and seen[0][0] == 1 and seen[0][1] > 1  # interrupted with tasks still pending
    assert list(out.iterdir()) == []
    assert ray.get(ray.remote(num_cpus=1)(nap).remote(0.1), timeout=30) == 0.1  # actors gone, CPUs free
