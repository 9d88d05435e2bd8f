"""``trtq run``: the whole job from one config file -- calibrate, export, evaluate, and build, bench and
report where TensorRT and a GPU are present -- into an artifacts folder with a manifest."""

from __future__ import annotations

import click

from trtq.commands.options.common import quiet_option


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command("run")
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path())
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Artifacts folder [default: the config's `output`, else trtq-artifacts beside the config].")
@click.option("--steps", default="all", show_default=True, metavar="LIST",
              help="Steps to run, comma-separated: calibrate, export, evaluate, build, bench, report, or the groups "
                   "cpu (the first three), gpu (the last three), all. What they need runs too (or is reused).")
@click.option("--force", is_flag=True, help="Run every selected step even when its inputs are unchanged.")
@click.option("--require-gpu", is_flag=True,
              help="Fail (exit 2) before any work when build/bench/report cannot run here, instead of skipping them.")
@click.option("--check", is_flag=True, help="Check the config and the data, print the plan, run nothing.")
@click.option("--step-summary", type=click.Path(dir_okay=False), metavar="FILE",
              help='Append the Markdown summary to FILE (in GitHub Actions: --step-summary "$GITHUB_STEP_SUMMARY").')
@quiet_option("No progress lines; warnings, errors and the summary only.")
@click.pass_context
def run(ctx, config_path, output, steps, force, require_gpu, check, step_summary, quiet):
    """Run the pipeline declared in CONFIG (default: ./trtq.toml, else [tool.trtq] in ./pyproject.toml).

    Each step runs where the machine can run it: statistics, calibration, the Q/DQ and FP16 ONNX
    exports and their evaluation against FP32 on any machine; engine build, benchmark and
    per-layer report where TensorRT and a GPU are present (otherwise they are skipped, and the
    summary says why). A step whose inputs and tool versions are unchanged is reused.

    \b
    Exit status: 0 all steps done (or skipped for want of a GPU) and every gate passed;
                 2 bad config or input (nothing was run); 3 a gate failed;
                 4 a step failed; 130/143 interrupted (SIGINT/SIGTERM).

    \b
    Examples:
      trtq run                                  # ./trtq.toml
      trtq run trtq.toml --steps cpu            # calibrate + export + evaluate only
      trtq run pyproject.toml --require-gpu     # on a GPU runner
    """
    from trtq.fileio import check_output_path
    from trtq.pipeline import ConfigError, Interrupted, Pipeline, SignalGuard, load_config, parse_steps, plan
    from trtq.pipeline.manifest import MANIFEST_NAME
    from trtq.pipeline.runner import SUMMARY_NAME, check_artifacts

    echo = (lambda _text: None) if quiet else (lambda text: _err(f"trtq: {text}"))

    def warn(text: str) -> None:
        _err(f"trtq: warning: {text}")

    kinds = parse_steps(steps)
    if step_summary:
        check_output_path(step_summary)
    with SignalGuard() as guard:
        try:
            try:
                config = load_config(config_path, output=output, warn=warn)
            except ConfigError as exc:
                for line in exc.problems:
                    _err(f"trtq: error: {line}")
                ctx.exit(2)
            check_artifacts(config, step_summary)
            if check:
                _print_plan(config, plan(config))
                return
            if not quiet:
                variants = sum(len(m.variants) for m in config.models)
                _err(f"trtq: {config.display}: {len(config.models)} model(s), {variants} variant(s) -> {config.output}")
            pipeline = Pipeline(config, steps=kinds, force=force, require_gpu=require_gpu, guard=guard, echo=echo,
                                warn=warn)
            result = pipeline.run()
        except Interrupted as exc:
            _err(f"trtq: interrupted ({exc}); the manifest lists the steps that completed")
            ctx.exit(exc.exit_code)
    click.echo(result.text, nl=False)
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(result.markdown + "\n")
    if not quiet:
        _err(f"trtq: wrote {result.output / MANIFEST_NAME} and {result.output / SUMMARY_NAME}")
    ctx.exit(result.exit_code)


def _print_plan(config, steps) -> None:
    click.echo(f"{config.display}: config OK; artifacts go to {config.output}")
    for model in config.models:
        click.echo(f"model {model.name}: {model.path}")
        click.echo(f"  variants: {', '.join(v.name for v in model.variants)}")
        if model.gates:
            click.echo("  gates: " + ", ".join(f"{k} {v:g}" for k, v in model.gates.items()))
        for step in (s for s in steps if s.model is model):
            click.echo(f"  {step.id}{'  (needs TensorRT and a GPU)' if step.gpu else ''}")
