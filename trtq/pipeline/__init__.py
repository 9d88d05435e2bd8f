"""``trtq run``: one config file drives calibration, export and evaluation on any machine, and engine
builds, reports and benchmarks where TensorRT and a GPU are present, into one artifacts folder with a
``manifest.json`` that lists every file with its sha256 and what produced it.

    >>> from trtq.pipeline import load_config, Pipeline
    >>> result = Pipeline(load_config("trtq.toml")).run()
    >>> result.exit_code  # 0, or EXIT_GATE_FAILED / EXIT_STEP_FAILED
"""

from trtq.pipeline.config import ConfigError, PipelineConfig, find_config, load_config
from trtq.pipeline.plan import STEP_KINDS, parse_steps, plan
from trtq.pipeline.runner import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK, EXIT_STEP_FAILED, Pipeline, RunResult
from trtq.pipeline.signals import Interrupted, SignalGuard

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_GATE_FAILED",
    "EXIT_OK",
    "EXIT_STEP_FAILED",
    "STEP_KINDS",
    "ConfigError",
    "Interrupted",
    "Pipeline",
    "PipelineConfig",
    "RunResult",
    "SignalGuard",
    "find_config",
    "load_config",
    "parse_steps",
    "plan",
]
