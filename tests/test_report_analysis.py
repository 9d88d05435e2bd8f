"""Profile join, precision summary, lints and FP16-vs-INT8 comparison on the real A100 ResNet engines.

Expected numbers are recomputed here from the raw JSON files with plain Python (independently of
trtq's parser), and the key ones are also written out: they were read off the files by hand.
"""

from __future__ import annotations

import json

import pytest

from tests.report_data import A100, HANDMADE, TRTEXEC
from trtq.report.analysis import build_report
from trtq.report.compare import compare_reports
from trtq.report.layers import load_layer_info, parse_layer_info
from trtq.report.profile import (
    LayerTimeCollector,
    LayerTiming,
    Profile,
    join_profile,
    load_profile,
    parse_profile_json,
)
from trtq.report.trtexec_log import load_trtexec_log


def _report(variant: str, **kwargs):
    return build_report(
        load_layer_info(A100 / f"{variant}.graph.json"), load_profile(A100 / f"{variant}.profile.json"),
        label=variant, **kwargs,
    )


def _independent_share(variant: str, dtype_word: str) -> tuple[int, float, float]:
    """Layers whose first input's Format/Datatype names ``dtype_word``, and their summed profile time."""
    graph = json.loads((A100 / f"{variant}.graph.json").read_text())
    profile = json.loads((A100 / f"{variant}.profile.json").read_text())
    avg = {row["name"]: row["averageMs"] for row in profile if "name" in row}
    names = [layer["Name"] for layer in graph["Layers"] if dtype_word in layer["Inputs"][0]["Format/Datatype"]]
    total = sum(avg.values())
    time = sum(avg[n] for n in names)
    return len(names), time, 100.0 * time / total


# --- profile files -----------------------------------------------------------------------------


def test_parse_export_profile_with_median() -> None:
    profile = load_profile(A100 / "qat.profile.json")
    assert profile.iterations == 1 and len(profile.rows) == 37
    first = profile.rows[0]
    assert (first.name, first.total_ms, first.average_ms, first.median_ms) == ("QuantizeLinear_2", 0.06144, 0.06144,
                                                                               0.06144)
    assert first.percentage == pytest.approx(5.60748)


def test_parse_export_profile_without_median() -> None:
    # TensorRT 8.x wrote no medianMs; the shape is otherwise the same.
    doc = [{"count": 50}, {"name": "conv", "timeMs": 10.0, "averageMs": 0.2, "percentage": 80.0},
           {"name": "fc", "timeMs": 2.5, "averageMs": 0.05, "percentage": 20.0}]
    profile = parse_profile_json(doc)
    assert profile.iterations == 50 and [r.median_ms for r in profile.rows] == [None, None]
    assert profile.total_ms == pytest.approx(0.25)


@pytest.mark.parametrize(
    "doc",
    [[{"count": "x"}, {"name": "a", "timeMs": 1}], [{"name": "a", "timeMs": 1, "medianMs": "z"}],
     [{"name": "a"}], [{"timeMs": 1.0}], [{"name": "a", "timeMs": None}]],
)
def test_profile_entries_with_wrong_types_are_one_line_errors(doc: list) -> None:
    from trtq.errors import TrtqError

    with pytest.raises(TrtqError, match=r"p\.json: not an --exportProfile entry"):
        parse_profile_json(doc, source="p.json")


def test_profile_from_dump_profile_log_table() -> None:
    profile = load_profile(TRTEXEC / "result-05.log")
    assert profile.iterations == 18362 and len(profile.rows) == 15
    assert profile.rows[1].name == "node_conv2d_myl0_1" and profile.rows[1].average_ms == 0.0105


def test_export_json_round_trip() -> None:
    profile = load_profile(A100 / "fp16.profile.json")
    again = parse_profile_json(json.loads(profile.to_export_json()))
    assert [(r.name, r.total_ms, r.median_ms) for r in again.rows] == [
        (r.name, r.total_ms, r.median_ms) for r in profile.rows]
    assert [r.percentage for r in again.rows] == pytest.approx([r.percentage for r in profile.rows], rel=1e-4)


def test_iprofiler_collector_counts_iterations_like_trtexec() -> None:
    collector = LayerTimeCollector()
    layers = ["conv", "pool", "fc"]
    per_iteration = [[1.0, 0.5, 0.2], [3.0, 0.7, 0.2], [2.0, 0.6, 0.5]]
    for times in per_iteration:
        for name, ms in zip(layers, times, strict=True):
            collector.report_layer_time(name, ms)
    profile = collector.profile()
    assert profile.iterations == 3
    assert [r.name for r in profile.rows] == layers
    conv = profile.rows[0]
    assert (conv.total_ms, conv.average_ms, conv.median_ms) == (6.0, 2.0, 2.0)
    assert sum(r.percentage for r in profile.rows) == pytest.approx(100.0)
    assert profile.total_ms == pytest.approx((1.7 + 3.9 + 3.1) / 3)


# --- joining and the precision summary --------------------------------------------------------


def test_qat_precision_summary_matches_the_files() -> None:
    report = _report("qat")
    summary = report.precision_summary()
    layers, time_ms, share = _independent_share("qat", "Int8")
    assert (layers, round(time_ms, 6), round(share, 2)) == (22, 0.710656, 64.86)  # read off the files by hand
    assert summary["INT8"]["layers"] == layers
    assert summary["INT8"]["time_ms"] == pytest.approx(time_ms)
    assert summary["INT8"]["time_pct"] == pytest.approx(share)
    assert set(summary) == {"INT8", "FP16", "FP32"}
    assert (summary["FP16"]["layers"], summary["FP32"]["layers"]) == (11, 4)
    assert report.total_ms == pytest.approx(1.09568)
    assert sum(s["layers"] for s in summary.values()) == 37


def test_per_layer_shares_equal_the_profile_percentages() -> None:
    report = _report("qat")
    percentages = {r.name: r.percentage for r in load_profile(A100 / "qat.profile.json").rows}
    for row in report.rows:
        assert row.time_pct == pytest.approx(percentages[row.name], abs=5e-5)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("fp16", {"FP16": 35, "FP32": 1}),  # the one FP32 layer: the input reformat FP32 -> FP16
        ("fp32", {"TF32": 20, "FP32": 12}),
    ],
)
def test_precision_counts_fp16_and_fp32_engines(variant: str, expected: dict[str, int]) -> None:
    summary = _report(variant).precision_summary()
    assert {k: v["layers"] for k, v in summary.items()} == expected
    if variant == "fp16":
        layers, time_ms, _ = _independent_share("fp16", "FP16")
        assert summary["FP16"]["time_ms"] == pytest.approx(time_ms) and layers == 35


def test_reformat_and_qdq_summaries() -> None:
    qat = _report("qat")
    assert qat.reformat_summary()["layers"] == 2  # the third reformat is an elided NoOp
    assert qat.reformat_summary()["time_ms"] == pytest.approx(0.036864 + 0.009216)
    assert qat.qdq_summary()["layers"] == 10
    assert qat.qdq_summary()["time_ms"] == pytest.approx(0.232448)
    fp16 = _report("fp16")
    assert fp16.reformat_summary()["layers"] == 2
    assert fp16.reformat_summary()["time_ms"] == pytest.approx(0.080896 + 0.007168)


def test_unmatched_profile_rows_are_kept_and_counted() -> None:
    # exportLayerInfo.json (result-04's build) and result-05's --dumpProfile (another build of the same
    # model, Myelin sub-kernel names): only the two pooling layers share a name.
    engine = load_layer_info(TRTEXEC / "exportLayerInfo.json")
    profile = load_profile(TRTEXEC / "result-05.log")
    join = join_profile(engine, profile)
    assert join.matched_count == 2
    assert {r.layer.name for r in join.rows if r.timing} == {"node_max_pool2d", "node_max_pool2d_1"}
    assert len(join.unmatched) == 13
    assert join.total_ms == pytest.approx(sum(r.average_ms for r in profile.rows))
    report = build_report(engine, profile)
    um = report.unmatched_summary()
    assert um["rows"] == 13
    assert um["time_pct"] == pytest.approx(100 * (0.0833 - 0.0045 - 0.0045) / 0.0833, abs=0.2)
    assert any("13 profile rows match no layer" in n for n in report.notes)
    assert sum(r.time_pct for r in report.rows if r.time_pct) + um["time_pct"] == pytest.approx(100.0)


def test_duplicate_profile_names_are_not_lost() -> None:
    engine = parse_layer_info({"Layers": ["a", "b"]})
    profile = Profile(iterations=1, rows=[LayerTiming("a", 1, 1), LayerTiming("b", 2, 2), LayerTiming("a", 3, 3)])
    join = join_profile(engine, profile)
    assert [u.total_ms for u in join.unmatched] == [3]
    assert join.total_ms == 6


# --- lints -------------------------------------------------------------------------------------


def test_qat_lints() -> None:
    report = _report("qat")
    assert report.int8_expected
    kinds = {}
    for lint in report.lints:
        kinds.setdefault(lint.kind, []).append(lint.layer)
    assert kinds["int8-fallback"] == ["MaxPool_12", "GlobalAveragePool_246"]
    assert len(kinds["unfused-qdq"]) == 10
    assert "reformat-cost" not in kinds  # the largest working reformat takes 3.4 %
    first = next(lint for lint in report.lints if lint.layer == "QuantizeLinear_2")
    assert "network input 'input.1'" in first.message
    residual = next(lint for lint in report.lints if lint.layer == "QuantizeLinear_40")
    assert "residual" in residual.message and "Add_36" in residual.message
    pool = next(lint for lint in report.lints if lint.layer == "MaxPool_12")
    assert "FP32" in pool.message and pool.time_ms == pytest.approx(0.095232)


def test_reformat_lint_threshold() -> None:
    fp16 = _report("fp16")
    lints = [lint for lint in fp16.lints if lint.kind == "reformat-cost"]
    assert [lint.layer for lint in lints] == ["Reformatting CopyNode for Input Tensor 0 to Conv_0 + Relu_1"]
    assert "FP32 to FP16" in lints[0].message and "--inputIOFormats" in lints[0].message
    assert not [lint for lint in fp16.lints if lint.kind == "int8-fallback"]  # no INT8 in this engine
    lower = _report("qat", reformat_threshold_pct=3.0)
    assert [lint.layer for lint in lower.lints if lint.kind == "reformat-cost"] == [
        "Reformatting CopyNode for Output Tensor 0 to MaxPool_12"]


def test_expect_int8_on_fp16_engine_flags_every_convolution_and_pool() -> None:
    report = _report("fp16", expect_int8=True)
    flagged = [lint.layer for lint in report.lints if lint.kind == "int8-fallback"]
    assert len(flagged) == 21 + 2  # 21 convolutions (incl. the Gemm as CaskConvolution) + 2 pools


def test_missing_range_lints_from_ranges_and_build_log() -> None:
    engine = load_layer_info(A100 / "qat.graph.json")
    every_tensor = {t.name for layer in engine.layers for t in [*layer.inputs, *layer.outputs]}
    complete = build_report(engine, None, ranges=every_tensor, ranges_source="r.json")
    assert not [lint for lint in complete.lints if lint.kind == "missing-range"]
    # TensorRT-internal copies ("Reformatted Input Tensor ...") are never expected in a range file
    external = {n for n in every_tensor if not n.startswith("Reformatted ")}
    assert not [lint for lint in build_report(engine, None, ranges=external).lints if lint.kind == "missing-range"]
    log = load_trtexec_log(HANDMADE / "trtexec-8.6-handmade.log")
    from_log = build_report(engine, None, missing_scale=log.missing_scale_tensors)
    messages = [lint.message for lint in from_log.lints if lint.kind == "missing-range"]
    assert len(messages) == 2 and "(Unnamed Layer* 3) [Shuffle]_output" in messages[0] and "fc1_out" in messages[1]
    assert from_log.ranges_checked
    assert not any(n.startswith("tensors without ranges") for n in from_log.notes)
    assert any(n.startswith("tensors without ranges: not checked") for n in build_report(engine, None).notes)


def test_missing_range_lint_names_exactly_the_absent_tensor() -> None:
    engine = load_layer_info(A100 / "qat.graph.json")
    capable = {t.name for layer in engine.layers if not layer.is_qdq and not layer.is_reformat
               and layer.type in ("CaskConvolution", "TiledPooling") for t in [*layer.inputs, *layer.outputs]}
    external = {n for n in capable if not n.startswith("Reformatted ")}
    absent = "input.8" if "input.8" in external else sorted(external)[0]
    report = build_report(engine, None, ranges=external - {absent})
    assert [lint.message.split("'")[1] for lint in report.lints if lint.kind == "missing-range"] == [absent]


def test_unfused_dequantize_quantize_pair() -> None:
    # hand-made: DQ (INT8 -> FP16) feeding Q (FP16 -> INT8) with nothing in between
    def tensor(name, dtype):
        return {"Name": name, "Dimensions": [1, 8], "Format/Datatype": dtype}

    doc = {"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution", "Inputs": [tensor("x", "Int8")],
         "Outputs": [tensor("c", "Int8")], "TacticName": "sm80_xmma_i8i8_i8i32_tensor16x8x32"},
        {"Name": "DequantizeLinear_5", "LayerType": "Reformat", "Origin": "QDQ", "Inputs": [tensor("c", "Int8")],
         "Outputs": [tensor("d", "Half")]},
        {"Name": "QuantizeLinear_6", "LayerType": "Reformat", "Origin": "QDQ", "Inputs": [tensor("d", "Half")],
         "Outputs": [tensor("q", "Int8")]},
    ], "Bindings": ["x", "q"]}
    profile = Profile(1, [LayerTiming("conv", 1.0, 1.0), LayerTiming("DequantizeLinear_5", 0.2, 0.2),
                          LayerTiming("QuantizeLinear_6", 0.3, 0.3)])
    report = build_report(parse_layer_info(doc), profile)
    qdq = [lint for lint in report.lints if lint.kind == "unfused-qdq"]
    assert len(qdq) == 1 and "pair" in qdq[0].message
    assert qdq[0].time_ms == pytest.approx(0.5) and qdq[0].time_pct == pytest.approx(100 * 0.5 / 1.5)


# --- FP16 vs INT8 comparison -------------------------------------------------------------------


def test_compare_fp16_with_qat() -> None:
    fp16, qat = _report("fp16"), _report("qat")
    cmp = compare_reports(fp16, qat)
    assert len(cmp.pairs) == 23 and all(p.a and p.b and p.exact for p in cmp.pairs)
    assert [(p.a.anchor.name, p.b.anchor.name) for p in cmp.pairs[:3]] == [
        ("Conv_0 + Relu_1", "conv1.weight + QuantizeLinear_7 + Conv_9"),
        ("MaxPool_2", "MaxPool_12"),
        ("Conv_3 + Relu_4", "layer1.0.conv1.weight + QuantizeLinear_20 + Conv_22"),
    ]
    assert (cmp.pairs[-1].a.anchor.name, cmp.pairs[-1].b.anchor.name)[0] == "Gemm_48"
    # every layer is charged to exactly one pair, so the deltas add up to the difference of the totals
    assert sum(p.delta_ms for p in cmp.pairs) == pytest.approx(qat.total_ms - fp16.total_ms)
    # first pair: FP16 input reformat + conv vs INT8 input quantize + DP4A conv (values from the profiles)
    assert cmp.pairs[0].delta_ms == pytest.approx((0.06144 + 0.201728) - (0.080896 + 0.111616))
    losses, gains = cmp.losses(), cmp.gains()
    assert losses[0].b.anchor.name == "conv1.weight + QuantizeLinear_7 + Conv_9"
    assert gains[0].delta_ms == pytest.approx(min(p.delta_ms for p in cmp.pairs))
    assert gains[0].a.anchor.precision == "FP16" and gains[0].b.anchor.precision == "INT8"
    doc = cmp.to_dict()
    assert (doc["matched_pairs"], doc["only_a"], doc["only_b"]) == (23, 0, 0)


def test_compare_without_profiles_aligns_by_shape() -> None:
    a = build_report(load_layer_info(A100 / "fp32.graph.json"), None)
    b = build_report(load_layer_info(A100 / "qat.graph.json"), None)
    cmp = compare_reports(a, b)
    assert not cmp.timed
    assert sum(1 for p in cmp.pairs if p.a and p.b) == 23
    assert all(p.delta_ms is None for p in cmp.pairs)
