"""Flags that every command declares the same way; each command says what it still prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def quiet_option(still_printed: str = "Print errors and warnings only.") -> Callable[[F], F]:
    """``-q/--quiet`` (the ``quiet`` argument); ``still_printed`` is its help: what the command prints anyway."""
    return click.option("-q", "--quiet", is_flag=True, help=still_printed)
