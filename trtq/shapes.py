"""Shape specifications in trtexec syntax: ``name:1x3x224x224,other:1x128``.

Input names may contain ``:`` (``'input:0':1x3``), so the dimensions are split off at the
last colon, as trtexec does; names may also be quoted with single or double quotes.
"""

from __future__ import annotations

from trtq.errors import TrtqError

Shape = tuple[int, ...]


def parse_dims(text: str, *, what: str = "shape") -> Shape:
    """``"1x3x224x224"`` -> ``(1, 3, 224, 224)``; a scalar is the empty string."""
    text = text.strip()
    if text == "":
        return ()
    dims = []
    for part in text.lower().split("x"):
        part = part.strip()
        if not part.isdigit():
            raise TrtqError(f"bad {what} '{text}': dimensions must be positive integers separated by 'x'")
        value = int(part)
        if value <= 0:
            raise TrtqError(f"bad {what} '{text}': dimensions must be positive")
        dims.append(value)
    return tuple(dims)


def _split_top_level(spec: str) -> list[str]:
    """Split at commas that are not inside quotes."""
    parts, current, quote = [], [], None
    for ch in spec:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quote:
        raise TrtqError(f"bad shape spec '{spec}': unbalanced quote")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_shape_spec(spec: str | None) -> dict[str, Shape]:
    """Parse a trtexec ``--shapes``/``--optShapes`` value into ``{name: dims}``."""
    if not spec:
        return {}
    shapes: dict[str, Shape] = {}
    for item in _split_top_level(spec):
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise TrtqError(f"bad shape spec '{item}': expected NAME:DIMS, e.g. input:1x3x224x224")
        name = name.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
            name = name[1:-1]
        if name in shapes:
            raise TrtqError(f"bad shape spec: input '{name}' is given twice")
        shapes[name] = parse_dims(dims, what=f"shape for '{name}'")
    return shapes


def format_shape_spec(shapes: dict[str, Shape]) -> str:
    """Inverse of :func:`parse_shape_spec` (quotes names that contain ':' or ',')."""
    items = []
    for name, dims in shapes.items():
        shown = f"'{name}'" if (":" in name or "," in name) else name
        items.append(f"{shown}:{'x'.join(str(d) for d in dims)}")
    return ",".join(items)
