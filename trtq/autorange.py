"""``auto`` ranges, per tensor: what is degenerate about a tensor's statistics, and each method's
range with the guards that keep it from breaking real models.

Why guards. On real trained models the KL search (entropy2) picks thresholds that clip half of a
tensor's values when its histogram has a spike at the top (saturating activations, white page
backgrounds, concatenated detection heads: the divergence does not see the *magnitude* of what it
clips), and it is noise on sparse histograms (an SE block's N x C x 1 x 1 vectors: a few thousand
values over 2,048 bins). The guards below are per tensor and computed from the one collected state:

* **spike at the top** (at least ``SPIKE_SHARE`` of the non-zero values within the top
  ``SPIKE_BAND`` of the range): the spike is real signal, so nothing may clip it -> ``absmax``;
* **sparse** (fewer than ``SPARSE_VALUES`` non-zero values): no threshold search is trustworthy
  and the calibration set has not seen the tail it would clip -> ``absmax``;
* **constant** (min == max) -> ``absmax`` (one exact level); **all zero** / **no finite value**:
  no int8 scale exists -> 0, reported (the Q/DQ export leaves such tensors in float);
* **data-independent** (computed only from shapes and constants: anchor grids from ``Range``,
  box-decoding constants): its values are the same for every input, so the exact range ->
  ``absmax``;
* every other tensor: the method's own range, but never clipping more than ``MAX_CLIPPED`` of its
  values (the range is raised to that percentile of |x| when the method clips more).

Which method ``auto`` uses for a model is chosen by measuring the guarded candidates end to end
(:mod:`trtq.accuracy.auto`); this module is pure statistics and never runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import onnx

from trtq.ranges import range_function
from trtq.stats import FINE_BINS, TensorStats

SPIKE_BAND = 0.02  # the top 2 % of [0, absmax]
SPIKE_SHARE = 0.002  # 0.2 % of the non-zero values there is a spike (a smooth tail holds ~1e-5)
SPARSE_VALUES = 20 * 2048  # fewer non-zero values than 20 per bin of the 2048-bin view: sparse
MAX_CLIPPED = 0.005  # auto never clips more than 0.5 % of a tensor's values
# shape arithmetic: their outputs carry no data values, only sizes
_SHAPE_OPS = frozenset({"Shape", "Size"})

SPIKE, SPARSE, CONSTANT, ZERO, EMPTY, DATA_INDEPENDENT = (
    "spike at top", "sparse", "constant", "all zero", "no finite value", "data-independent")


@dataclass(frozen=True)
class TensorDiagnosis:
    """What is unusual about one tensor's statistics (``flags`` empty: a normal activation)."""

    name: str
    flags: tuple[str, ...]
    top_share: float  # share of the non-zero values within SPIKE_BAND of absmax
    nonzero: int

    @property
    def degenerate(self) -> bool:
        return bool(self.flags)

    def describe(self) -> str:
        details = {SPIKE: f"{100 * self.top_share:.1f} % of its values in the top {100 * SPIKE_BAND:g} % of the range",
                   SPARSE: f"{self.nonzero} non-zero values"}
        return ", ".join(f"{flag} ({details[flag]})" if flag in details else flag for flag in self.flags)


def data_independent_tensors(proto: onnx.ModelProto) -> frozenset[str]:
    """Tensors computed only from shapes and constants (no graph input's *values* reach them).

    A Shape or Size node cuts the flow of values: its output depends on the input's dimensions
    only. Everything downstream of a graph input through any other op carries data.
    """
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    carrying = {i.name for i in graph.input if i.name not in initializers}
    produced: set[str] = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        outputs = [o for o in node.output if o]
        produced.update(outputs)
        if node.op_type not in _SHAPE_OPS and any(i in carrying for i in node.input if i):
            carrying.update(outputs)
    return frozenset(produced - carrying)


def diagnose(stats: TensorStats, data_independent: bool = False) -> TensorDiagnosis:
    """The degenerate cases of one tensor (see the module docstring for the thresholds)."""
    flags: list[str] = []
    top_share, nonzero = 0.0, max(0, stats.count - stats.zeros)
    if stats.count == 0:
        flags.append(EMPTY)
    elif stats.absmax == 0.0:
        flags.append(ZERO)
    else:
        if stats.min == stats.max:
            flags.append(CONSTANT)
        if stats.keep_histogram and stats.exponent is not None and nonzero > 0:
            edge = min(FINE_BINS - 1, int((1.0 - SPIKE_BAND) * stats.absmax / stats.fine_width))
            top_share = float(stats.hist[edge:].sum()) / nonzero
            if top_share >= SPIKE_SHARE and CONSTANT not in flags:
                flags.append(SPIKE)
        if nonzero < SPARSE_VALUES:
            flags.append(SPARSE)
    if data_independent:
        flags.append(DATA_INDEPENDENT)
    return TensorDiagnosis(stats.name, tuple(flags), top_share, nonzero)


def guard(stats: TensorStats, method: str, percentile: float, diagnosis: TensorDiagnosis) -> tuple[float, bool]:
    """``method``'s range for one tensor with the guards of the module docstring applied, and whether the
    guards changed it (the method's own range is searched only where it is used or compared)."""
    if EMPTY in diagnosis.flags or ZERO in diagnosis.flags:
        return 0.0, False
    own = range_function(method, percentile)
    if set(diagnosis.flags) & {SPIKE, SPARSE, CONSTANT, DATA_INDEPENDENT}:
        return stats.absmax, not math.isclose(float(own(stats)), stats.absmax, rel_tol=1e-6)
    amax = min(float(own(stats)), stats.absmax)
    if stats.fraction_above(amax) > MAX_CLIPPED:
        floor = min(float(range_function("percentile", 100.0 * (1.0 - MAX_CLIPPED))(stats)), stats.absmax)
        if floor > amax:
            return floor, True
    return amax, False


def guarded_amax(stats: TensorStats, method: str, percentile: float, diagnosis: TensorDiagnosis) -> float:
    """``method``'s range for one tensor with the guards of the module docstring applied."""
    return guard(stats, method, percentile, diagnosis)[0]


def diagnose_all(stats: Iterable[TensorStats], independent: Iterable[str] = ()) -> dict[str, TensorDiagnosis]:
    """Tensor name -> diagnosis, for every tensor of ``stats``."""
    independent = frozenset(independent)
    return {s.name: diagnose(s, s.name in independent) for s in stats}


def guarded_ranges(stats: Iterable[TensorStats], method: str, percentile: float,
                   diagnoses: Mapping[str, TensorDiagnosis], changed: set[str] | None = None) -> dict[str, float]:
    """Tensor name -> guarded amax of ``method`` for every tensor; ``changed`` collects the tensors whose
    range the guards changed."""
    ranges = {}
    for s in stats:
        ranges[s.name], was_changed = guard(s, method, percentile, diagnoses[s.name])
        if was_changed and changed is not None:
            changed.add(s.name)
    return ranges
