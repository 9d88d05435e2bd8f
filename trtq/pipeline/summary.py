"""Gates (pass / fail / not evaluated, with the numbers) and the run summary as Markdown and plain text."""

from __future__ import annotations

from typing import Any

from trtq.pipeline.schema import GATE_KEYS

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


def check_gates(gates: dict[str, float], evaluation: dict | None, bench: dict | None,
                quantize: dict | None = None) -> list[dict[str, Any]]:
    """One record per configured gate: ``{"gate", "threshold", "value", "status", "reason"}``.

    ``evaluation`` is the evaluate step's metrics, ``bench`` the bench step's result (None when the
    step has no result here); a gate without its number is "not evaluated", which is not a failure.
    ``quantize`` (the quantize step's result, for variants without an explicit calibrator) adds the
    ``quantize_target`` gate: the target quantize verified (the gates it could express, else its default).
    """
    records = [quantize_gate(quantize)] if quantize else []
    for gate, threshold in gates.items():
        value, reason = _value(gate, evaluation, bench)
        if value is None and reason is None:  # SQNR of identical outputs: infinite
            status, shown = PASS, "identical outputs"
        elif value is None:
            status, shown = NOT_EVALUATED, None
        else:
            ok = value <= threshold if gate.startswith("max_") else value >= threshold
            status, shown = (PASS if ok else FAIL), value
        records.append({"gate": gate, "threshold": threshold, "value": shown, "status": status,
                        "unit": GATE_KEYS[gate][1], **({"reason": reason} if reason else {})})
    return records


def quantize_gate(result: dict[str, Any]) -> dict[str, Any]:
    record = result["record"]
    final = record["verification"]
    score = "SQNR inf" if final["sqnr_db"] is None else f"SQNR {final['sqnr_db']:.2f} dB"
    if final["drop_points"] is not None:
        score += f", drop {final['drop_points']:.2f} points"
    gate = {"gate": "quantize_target", "threshold": record["target"]["text"], "value": score,
            "status": PASS if result["ok"] else FAIL, "unit": "",
            "kept": len(record["keep"]), "layers": record["layers"]}
    if not result["ok"]:
        gate["reason"] = record["failure"]
    return gate


def _value(gate: str, evaluation: dict | None, bench: dict | None) -> tuple[float | None, str | None]:
    if gate == "max_latency_ms":
        median = ((bench or {}).get("latency_ms") or {}).get("median")
        return (median, None) if median is not None else (None, "no GPU latency: the bench step did not run here")
    if evaluation is None:
        return None, "no evaluation: the evaluate step did not complete"
    if gate == "max_top1_drop":
        drop = evaluation.get("top1_drop_points")
        return (drop, None) if drop is not None else (None, "no labels")
    if gate == "min_top1_agreement":
        agreement = evaluation.get("top1_agreement")
        return (100.0 * agreement, None) if agreement is not None else (None, "the output has one class")
    if gate == "min_sqnr_db":
        return evaluation.get("sqnr_db"), None  # None = identical outputs (infinite SQNR)
    if gate == "min_cosine":
        return evaluation.get("cosine"), None
    raise ValueError(gate)


def describe_gate(record: dict[str, Any]) -> str:
    """``min_sqnr_db: 23.21 dB < 40 dB (fail)``."""
    unit = f" {record['unit']}" if record["unit"] else ""
    gate, threshold, value, status = record["gate"], record["threshold"], record["value"], record["status"]
    if gate == "quantize_target":
        kept = f"{record['kept']} of {record['layers']} layers kept in float"
        if status == PASS:
            return f"{gate} ({threshold}): met, {value}, {kept}"
        return f"{gate} ({threshold}): missed: {record.get('reason')}"
    if status == NOT_EVALUATED:
        return f"{gate} {_num(threshold)}{unit}: not evaluated ({record.get('reason')})"
    if isinstance(value, str):
        return f"{gate} {_num(threshold)}{unit}: {value}"
    passed = status == PASS
    if gate.startswith("max_"):
        relation = "<=" if passed else ">"
    else:
        relation = ">=" if passed else "<"
    return f"{gate}: {_num(value)}{unit} {relation} {_num(threshold)}{unit}"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


# -- tables ------------------------------------------------------------------------------------------------

_COLUMNS = ("model", "variant", "samples", "FP32 top-1", "top-1", "top-1 drop", "top-1 agreement", "SQNR dB",
            "cosine", "GPU latency ms", "gates")


def summary_rows(variants: list[dict[str, Any]], markdown: bool) -> list[list[str]]:
    rows = []
    for v in variants:
        ev = v.get("evaluation") or {}
        latency = ((v.get("bench") or {}).get("latency_ms") or {}).get("median")
        gates = v.get("gates", [])
        failed = sum(1 for g in gates if g["status"] == FAIL)
        passed = sum(1 for g in gates if g["status"] == PASS)
        if not gates:
            verdict = "-"
        elif failed:
            verdict = f"{'❌ ' if markdown else ''}FAIL {failed}/{len(gates)}"
        else:
            open_ = len(gates) - passed
            verdict = f"{'✅ ' if markdown else ''}pass {passed}/{len(gates)}" + (f" ({open_} n/a)" if open_ else "")
        drop = ev.get("top1_drop_points")
        sqnr = ev.get("sqnr_db")
        rows.append([
            v["model"], v["variant"], str(ev.get("samples", "-")), _pct(ev.get("top1_fp32")), _pct(ev.get("top1")),
            "-" if drop is None else f"{drop:+.2f} pts", _pct(ev.get("top1_agreement")),
            ("inf" if ev else "-") if sqnr is None else f"{sqnr:.2f}",
            "-" if ev.get("cosine") is None else f"{ev['cosine']:.5f}",
            "-" if latency is None else f"{latency:.4g}", verdict,
        ])
    return rows


def _markdown_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _text_table(header, rows) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def render(run: dict[str, Any], markdown: bool) -> str:
    """The summary of a finished run: results per variant, gates, and what ran, was reused or skipped."""
    variants = run["variants"]
    rows = summary_rows(variants, markdown)
    lines = []
    if markdown:
        lines += [f"## trtq run: `{run['config']}`", ""]
        lines += _markdown_table(_COLUMNS, rows)
    else:
        lines += _text_table(_COLUMNS, rows)
    lines.append("")
    failed = [(v, g) for v in variants for g in v.get("gates", []) if g["status"] == FAIL]
    open_ = [(v, g) for v in variants for g in v.get("gates", []) if g["status"] == NOT_EVALUATED]
    total = sum(len(v.get("gates", [])) for v in variants)
    bullet = "- " if markdown else "  "
    if not total:
        lines.append("**Gates:** none configured" if markdown else "gates: none configured")
    elif failed:
        lines.append(f"**Gates: {len(failed)} of {total} failed**" if markdown else
                     f"gates: {len(failed)} of {total} FAILED")
        lines += [f"{bullet}{v['model']}/{v['variant']}: {describe_gate(g)}" for v, g in failed]
    else:
        lines.append(f"**Gates:** all {total - len(open_)} evaluated passed" if markdown else
                     f"gates: all {total - len(open_)} evaluated passed")
    if open_:
        lines += [f"{bullet}{v['model']}/{v['variant']}: {describe_gate(g)}" for v, g in open_]
    lines.append("")
    counts = run["counts"]
    shown = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    lines.append(f"**Steps:** {shown}" if markdown else f"steps: {shown}")
    for reason, ids in run["skipped"].items():
        lines.append(f"{bullet}skipped {_group(ids)}: {reason}")
    for step_id, reason in run["failed"].items():
        lines.append(f"{bullet}FAILED {step_id}: {reason}")
    lines.append("")
    where = f"`{run['output']}`" if markdown else run["output"]
    lines.append(f"Artifacts: {where} ({run['files']} files, sha256 and size of each in manifest.json)")
    return "\n".join(lines) + "\n"


def _brief(ids: list[str], limit: int = 6) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _group(ids: list[str]) -> str:
    """``build, bench of a/int8, a/fp16`` when the ids are every kind for every owner, else the ids."""
    kinds = list(dict.fromkeys(i.rsplit("/", 1)[-1] for i in ids))
    owners = list(dict.fromkeys(i.rsplit("/", 1)[0] for i in ids))
    if len(ids) > 1 and len(kinds) * len(owners) == len(set(ids)):
        return f"{', '.join(kinds)} of {_brief(owners)}"
    return _brief(ids)
