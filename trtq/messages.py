"""What trtq tells the user besides errors: one line each on stderr, never mixed with a command's output."""

from __future__ import annotations

import click


def warn(message: str) -> None:
    """Something the user should look at; the work goes on."""
    click.echo(f"trtq: warning: {message}", err=True)


def note(message: str) -> None:
    """Something trtq did on the user's behalf (an opset upgrade, a default it chose)."""
    click.echo(f"trtq: note: {message}", err=True)
