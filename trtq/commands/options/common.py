"""Flags that every command declares the same way; each command says what it still prints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def quiet_option(still_printed: str = "Print errors and warnings only.") -> Callable[[F], F]:
    """``-q/--quiet`` (the ``quiet`` argument); ``still_printed`` is its help: what the command prints anyway."""
    return click.option("-q", "--quiet", is_flag=True, help=still_printed)


def memory_budget_option() -> Callable[[F], F]:
    """``--memory-budget SIZE`` (the ``memory_budget`` argument, bytes or None), parsed by the library."""

    def parse(_ctx, _param, value):
        if value is None:
            return None
        from trtq.errors import TrtqError
        from trtq.segments import parse_memory_size

        try:
            return parse_memory_size(value)
        except TrtqError as exc:
            raise click.BadParameter(str(exc)) from exc

    return click.option(
        "--memory-budget", metavar="SIZE", callback=parse,
        help="Most activation memory the model runs may hold (512M, 2G; a plain number is MiB). Batches are "
             "run in slices of samples and the graph in segments to stay within it; ranges do not change. "
             "[default: 128M, or a quarter of the available memory when less]")


class MethodChoice(click.Choice):
    """A range-method choice that also takes the names users bring from other tools (``max`` for ``minmax``:
    :data:`trtq.ranges.METHOD_ALIASES`) and answers with trtq's own."""

    def convert(self, value, param, ctx):
        from trtq.ranges import METHOD_ALIASES

        own = METHOD_ALIASES.get(value, value)
        return super().convert(own if own in self.choices else value, param, ctx)
