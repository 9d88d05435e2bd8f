"""The text forms of preprocessing values: ``N|HxW`` sizes, ``1/255`` fractions, ``a,b,c`` lists.

Plain functions, so that the command-line options (``trtq.commands.options.data``) and the
``trtq.toml`` checker read the same text the same way. Each raises :class:`TrtqError` with a
message naming the value, never an option or a key: the caller knows which one it parsed.
"""

from __future__ import annotations

from fractions import Fraction

from trtq.errors import TrtqError


def parse_image_size(text: str, *, single_is_square: bool) -> int | tuple[int, int]:
    """``HxW`` -> ``(H, W)``; a single ``N`` -> ``(N, N)`` when ``single_is_square`` (a crop), else
    ``N`` (a resize's shorter side)."""
    parts = str(text).strip().lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise TrtqError(f"'{text}' is not N or HxW with positive integers (e.g. 256 or 224x224)")
    numbers = tuple(int(p) for p in parts)
    if len(numbers) == 2:
        return numbers
    return (numbers[0], numbers[0]) if single_is_square else numbers[0]


def parse_number_list(text: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406`` -> ``(0.485, 0.456, 0.406)``; each item may be a fraction (``1/2``)."""
    try:
        return tuple(float(Fraction(p.strip())) for p in str(text).split(",") if p.strip())
    except (ValueError, ZeroDivisionError):
        raise TrtqError(f"'{text}' is not a comma-separated list of numbers") from None


def parse_fraction(text: str) -> float:
    """A number or a fraction: ``0.00392156862745098`` or ``1/255``."""
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise TrtqError(f"'{text}' is not a number or a fraction like 1/255") from None
