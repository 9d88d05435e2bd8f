"""``trtq build`` as a job: the TensorRT layer's build, handed the accuracy loop where an INT8 build needs
``trtq quantize`` (INT8 without a calibrator).

Why here: the build decides whether quantize runs only once TensorRT is probed and a builder exists (a machine
without a GPU learns that before the long part), so it asks for quantize in the middle of its work. It asks
through the ``quantizer`` it is handed: ``trtq/trt/`` imports nothing of the accuracy loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import ModuleType

import numpy as np

from trtq.cache import write_cache
from trtq.errors import TargetMissed
from trtq.model import Model
from trtq.trt import TensorRTInfo
from trtq.trt.build import BuildOptions, BuildResult, TrtqRanges, build_engine, describe_quantize
from trtq.trt.plan import QUANTIZE, quantize_label

Echo = Callable[[str], None]


def quantize_ranges(model: Model, options: BuildOptions, batches: Iterable, info: TensorRTInfo,
                    echo: Echo) -> tuple[TrtqRanges, object]:
    """``trtq quantize`` on the data now (auto ranges, keep-in-float search, final Q/DQ model verified);
    its ranges are written to ``--cache`` at once. A missed target raises :class:`TargetMissed`."""
    from trtq.accuracy.quantize import quantize

    echo(f"trtq: {quantize_label(None)} on the CPU: one calibration pass, every guarded range method measured "
         "against FP32, layers kept in float only where the target needs them ...")
    result = quantize(model, batches, calibrator=QUANTIZE, min_sqnr=options.min_sqnr, max_drop=options.max_drop,
                      note=lambda line: echo(f"trtq: quantize: {line}"))
    record = result.record()
    if not result.ok:
        raise TargetMissed(f"trtq quantize: {result.failure}; no engine built (`trtq quantize` writes the "
                           "report; --calibrator entropy2 builds without the accuracy check)")
    echo(f"trtq: quantize: {describe_quantize(record)}")
    usable = result.usable_amax  # as `trtq quantize` writes them: no zero scale
    if options.cache_path is not None:
        write_cache(options.cache_path, result.cache(info.patch_version))
    origin = f"{quantize_label(len(result.keep))} on {result.stats.samples} samples"
    return TrtqRanges(usable, origin, True, record), result


def build(model: Model, options: BuildOptions, batches: Iterable[Mapping[str, np.ndarray]] | None = None, *,
          trt: ModuleType | None = None, echo: Echo | None = None) -> BuildResult:
    """:func:`trtq.trt.build.build_engine` with ``trtq quantize`` as its quantizer."""
    extra = {"echo": echo} if echo is not None else {}
    return build_engine(model, options, batches, trt=trt, quantizer=quantize_ranges, **extra)
