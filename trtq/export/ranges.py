"""Where the Q/DQ export gets its activation ranges: a TensorRT calibration cache or trtq's ranges JSON,
and how the names a user passes to ``--exclude`` are read (``@FILE`` lists included)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from trtq.cache import read_cache
from trtq.errors import TrtqError
from trtq.fileio import read_input_text

_INLINE_COMMENT = re.compile(r"\s+#")


def load_amax(cache: str | os.PathLike | None = None, ranges: str | os.PathLike | None = None) -> dict[str, float]:
    """Tensor name -> amax from exactly one of a calibration cache or a ranges JSON file."""
    if (cache is None) == (ranges is None):
        raise TrtqError("give exactly one source of ranges: --cache CACHE or --ranges RANGES.json")
    if cache is not None:
        return read_cache(cache).amax()
    from trtq.calibrate import read_ranges_json

    return read_ranges_json(ranges)


def describe_ranges(cache: str | os.PathLike | None = None, ranges: str | os.PathLike | None = None) -> str:
    """How messages name the source :func:`load_amax` reads (``ranges_source`` of the exports)."""
    return f"calibration cache {cache}" if cache is not None else f"ranges file {ranges}"


def split_ranges(amax: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Usable ranges (finite and > 0) and the names whose range cannot define a scale."""
    usable = {name: value for name, value in amax.items() if math.isfinite(value) and value > 0}
    unusable = [name for name in amax if name not in usable]
    return usable, unusable


def name_list_files(values: Iterable[str], option: str = "--exclude") -> dict[str, str]:
    """The ``@FILE`` lists among ``--exclude``-style arguments, by how the user wrote them: files a command reads,
    which none of its outputs may replace (:func:`trtq.fileio.check_outputs`)."""
    return {f"{option} {value}": value[1:] for value in values if value.startswith("@")}


def read_name_list(values: Iterable[str], what: str = "exclude list") -> list[str]:
    """Expand ``--exclude``-style arguments: a plain name, or ``@FILE`` with one name per line.

    Blank lines, lines starting with ``#`` and `` # ...`` tails are ignored in files; names keep
    inner spaces (ONNX names may have them), only the line's surrounding whitespace is stripped.
    """
    names: list[str] = []
    for value in values:
        if not value.startswith("@"):
            names.append(value)
            continue
        list_path = Path(value[1:])
        lines = read_input_text(list_path, what).splitlines()
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                names.append(_INLINE_COMMENT.split(text, maxsplit=1)[0].strip())
    return names
