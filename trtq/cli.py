"""The ``trtq`` command: a thin click layer over the Python API.

Subcommands are imported only when they run, so ``trtq --help`` stays fast and never
imports onnxruntime, tensorrt or a CUDA binding. To add a command, add one line to
``COMMANDS``: ``name: "module.path:attribute"`` (a click command object).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import warnings

import click

from trtq import __version__
from trtq.errors import TrtqError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (import path, one-line help shown by `trtq --help`), in the order a user meets them
    "quantize": ("trtq.commands.quantize:quantize",
                 "FP32 ONNX -> a verified INT8 Q/DQ model (auto ranges, layers kept in float only where needed)."),
    "calibrate": ("trtq.commands.calibrate:calibrate", "Compute INT8 ranges on the CPU; write a TensorRT cache."),
    "evaluate": ("trtq.commands.evaluate:evaluate", "Simulated INT8 vs FP32 accuracy on held-out data (no GPU)."),
    "sensitivity": ("trtq.commands.sensitivity:sensitivity",
                    "Rank layers by INT8 error (clipping or rounding); find the few to keep in FP16."),
    "export": ("trtq.commands.export:export", "Write an INT8 Q/DQ or FP16 ONNX model for TensorRT 11."),
    "build": ("trtq.commands.build:build", "Build a TensorRT engine (10.x calibrators or 11.x Q/DQ)."),
    "bench": ("trtq.commands.bench:bench", "Time an engine on the GPU like trtexec; compare with trtexec or its log."),
    "report": ("trtq.commands.report:report", "Per-layer precision, latency and lints of an engine (works on CPU)."),
    "run": ("trtq.commands.run:run", "The whole job from trtq.toml: calibrate, export, evaluate, build; a manifest."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lines come from COMMANDS so that listing them imports nothing.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrtqError as exc:
            click.echo(f"trtq: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.exceptions.UsageError as exc:  # one error style: one line naming the option, exit 2
            _usage_error(exc)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("trtq: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line, keep the traceback for TRTQ_DEBUG
            if os.environ.get("TRTQ_DEBUG"):
                traceback.print_exc()
            click.echo(
                f"trtq: internal error: {type(exc).__name__}: {exc} "
                "(set TRTQ_DEBUG=1 for the traceback and please report it)",
                err=True,
            )
            ctx.exit(1)


def _usage_error(exc: click.exceptions.UsageError) -> None:
    """A usage mistake as trtq's own errors look: ``trtq: error: <what> (see: trtq CMD --help)``, exit 2 (click's
    default is a three-line usage block)."""
    command = exc.ctx.command_path if exc.ctx is not None else "trtq"
    message = " ".join(exc.format_message().split())
    click.echo(f"trtq: error: {message} (see: {command} --help)", err=True)
    sys.exit(exc.exit_code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (``warnings.warn``) reach the user as one line, like trtq's own."""
    from trtq.messages import warn

    warn(str(message))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trtq")
def cli() -> None:
    """Calibrate ONNX models for TensorRT INT8/FP16, build engines, and explain them.

    \b
    Start here (runs on any machine, no GPU needed):
      trtq quantize calib_data/mnist-8.onnx --data calib_data/mnist -o mnist-8.int8.onnx
    """


def main() -> None:
    cli(prog_name="trtq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
