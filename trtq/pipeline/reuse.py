"""The reuse policy: whether a step runs, is reused, keeps an earlier result, or is skipped.

- an upstream step has no result here, or its result blocks its dependents (a missed quantize target):
  skipped (with the upstream's reason);
- not selected with ``--steps``, or a GPU step without a GPU: its earlier result is kept when its
  inputs are unchanged and its files still hash as recorded, else skipped (and the stale result goes);
- inputs and environment unchanged and the files verified: reused, unless ``--force``;
- otherwise: it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from trtq.pipeline.manifest import Manifest, fingerprint

RUN, REUSED, KEPT, SKIPPED = "run", "reused", "kept", "skipped"


@dataclass(frozen=True)
class Decision:
    """What to do with one step; ``parts`` (the fingerprint and its digests) only when it runs."""

    action: str
    reason: str | None = None
    parts: dict[str, Any] | None = None


@dataclass(frozen=True)
class Policy:
    """What the run was asked for and what this machine can do."""

    wanted: Collection[str]  # the selected steps and everything they need
    kinds: tuple[str, ...]  # as given to --steps, for messages
    force: bool
    gpu_ready: bool
    gpu_reason: str | None


def decide(step_id: str, needs: tuple[str, ...], gpu: bool, manifest: Manifest, policy: Policy,
           need_kinds: Mapping[str, str], fingerprint_parts: Callable[[], dict[str, Any]]) -> Decision:
    """The decision for one step. ``fingerprint_parts`` (its ``inputs`` and ``env``) is called only once
    every step it needs has a result, since the inputs read those results."""
    for need in needs:
        if manifest.entry(need) is None:
            upstream = manifest.steps.get(need, {})
            if upstream.get("status") == "skipped":
                reason = upstream.get("reason", "skipped")
            else:
                reason = f"needs {need_kinds[need]} ({need}), which {upstream.get('status', 'did not run')}"
            return Decision(SKIPPED, reason)
        blocked = (manifest.entry(need).get("result") or {}).get("blocks")
        if blocked:
            return Decision(SKIPPED, blocked)
    parts = fingerprint_parts()
    digests = {"inputs_sha256": fingerprint(parts["inputs"]), "env_sha256": fingerprint(parts["env"])}
    previous = manifest.entry(step_id)
    same_inputs = previous is not None and previous.get("inputs_sha256") == digests["inputs_sha256"]
    requested = step_id in policy.wanted
    if not requested or (gpu and not policy.gpu_ready):
        reason = policy.gpu_reason if requested else f"not selected (--steps {','.join(policy.kinds)})"
        if same_inputs and manifest.verified(step_id):
            return Decision(KEPT, f"{reason}; its earlier result has the same inputs")
        return Decision(SKIPPED, reason)
    if (not policy.force and same_inputs and previous.get("env_sha256") == digests["env_sha256"]
            and manifest.verified(step_id)):
        return Decision(REUSED)
    return Decision(RUN, parts={**parts, **digests})
