"""Layer-information parser, precision and kernel class, on real TensorRT layer JSON files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.report_data import A100, HANDMADE, TRTEXEC
from trtq.errors import TrtqError
from trtq.report.layers import load_layer_info, onnx_nodes_from_metadata, parse_layer_info, parse_layer_info_text
from trtq.report.precision import kernel_class, normalize_dtype


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


# --- data types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 8.x-10.x CASK format strings (all taken from the A100 ResNet files)
        ("Row major linear FP32", "FP32"),
        ("Channel major FP16 format where channel % 8 == 0", "FP16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
        ("Four wide channel vectorized row major Int8 format", "INT8"),
        ("Two wide channel vectorized row major FP16 format", "FP16"),
        ("Channel major FP32 format where channel % 4 == 0", "FP32"),
        # kgen/Myelin data-type words (10.16 exportLayerInfo.json)
        ("Float", "FP32"),
        ("Int32", "INT32"),
        ("Int64", "UNKNOWN"),
        # split 11.x keys and trt.DataType names
        ("Half", "FP16"),
        ("BFloat16", "BF16"),
        ("FP8", "FP8"),
        ("kFLOAT", "FP32"),
        ("BF16", "BF16"),
        ("BOOL", "UNKNOWN"),
        ("", "UNKNOWN"),
    ],
)
def test_normalize_dtype(text: str, expected: str) -> None:
    assert normalize_dtype(text) == expected


def test_every_format_string_in_the_real_files_is_understood() -> None:
    formats = set()
    for path in [*A100.glob("*.graph.json"), TRTEXEC / "exportLayerInfo.json"]:
        for layer in _raw(path)["Layers"]:
            for t in layer["Inputs"] + layer["Outputs"]:
                formats.add(t["Format/Datatype"])
    unknown = {f for f in formats if normalize_dtype(f) == "UNKNOWN"}
    assert unknown == {"Int64"}  # the only type outside trtq's precision vocabulary
    assert len(formats) == 14


# --- kernel classes on real tactic names ------------------------------------------------------

REAL_TACTICS = {
    "ampere_fp32_icudnn_int8x4_128x64_relu_medium_nn_v1": "int8_dp4a",
    "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_vect_c_32_"
    "tilesize128x128x64_stage4_warpsize2x2x1_g1_tensor16x8x32_t1r3s3": "int8_tc",
    "sm80_xmma_fprop_implicit_gemm_interleaved_i8f16_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_vect_c_32_"
    "tilesize128x128x64_stage4_warpsize2x2x1_g1_tensor16x8x32_t1r1s1": "int8_tc",
    "sm80_xmma_fprop_implicit_gemm_interleaved_i8f32_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_tilesize64x32x64_"
    "stage6_warpsize2x1x1_g1_tensor16x8x32_t1r1s1_alignc4_nchw": "int8_tc",
    "trt_turing_cutlass_image_network_first_layer_hmma_fprop_f16f16f32_nhwc_nhwc_k64r7s7c4_stride2x2": "fp16_tc",
    "ampere_h16816cudnn_128x128_ldg8_relu_exp_stages_64x3_large_nhwc_tn_v1": "fp16_tc",
    "sm75_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize64x128x32_stage1_warpsize2x2x1_g1_"
    "tensor16x8x8_t1r1s1": "fp16_tc",
    "sm80_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x128x32_stage4_warpsize2x2x1_g1_"
    "tensor16x8x8": "tf32_tc",
    "ampere_scudnn_128x64_relu_xregs_large_nn_v1": "fp32_simt",
    "sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nchwkcrs_nchw_tilesize32x32x8_stage3_warpsize1x2x1_g1_ffma_"
    "t1r5s5_aligna4_alignc4": "fp32_simt",
    # no token: honestly unknown
    "__myl_MulSum_0xf51780477f7b66bae3896079c053d676": "unknown",
    "sm50_xmma_pooling_fw_4d_FP16FP32NHWC_Average_FastDiv_CAlign8": "unknown",
    "sm50_xmma_cublas_gemvx_f32f32_f32_f32_tn_n_int32_unit_n_launch_param8x32x32_strided_unit_stride": "unknown",
}


def _all_tactics() -> set[str]:
    names = set()
    for path in [*A100.glob("*.graph.json"), TRTEXEC / "exportLayerInfo.json"]:
        names |= {layer["TacticName"] for layer in _raw(path)["Layers"] if "TacticName" in layer}
    return names


@pytest.mark.parametrize(("tactic", "expected"), sorted(REAL_TACTICS.items()))
def test_kernel_class_of_real_tactics(tactic: str, expected: str) -> None:
    assert tactic in _all_tactics(), "the tactic must come from a real engine file"
    assert kernel_class(tactic) == expected


@pytest.mark.parametrize(
    ("tactic", "expected"),
    [
        # Names quoted in the research notes (NVIDIA/TensorRT trex samples, issue #1179): precedence checks.
        ("turing_fp16_i8816cudnn_int8_128x128_ldg16_relu_large_nt_v1", "int8_tc"),  # fp16 in the name, INT8 wins
        ("volta_int8x4_icudnn_int8x4_128x128_relu_xregs_large_nn_v1", "int8_dp4a"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_hgmma", "bf16_tc"),
        ("Hopper_qgmma_e4m3_fp32_kernel", "fp8_tc"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_kernel_class_token_order(tactic: str | None, expected: str) -> None:
    assert kernel_class(tactic) == expected


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("qat", {"int8_tc": 20, "int8_dp4a": 1}),
        ("fp16", {"fp16_tc": 21}),
        ("fp32", {"tf32_tc": 20, "fp32_simt": 1}),
    ],
)
def test_kernel_classes_per_engine(variant: str, expected: dict[str, int]) -> None:
    engine = load_layer_info(A100 / f"{variant}.graph.json")
    counts = Counter(layer.kernel_class for layer in engine.layers if layer.tactic)
    # layers with a tactic: 21 convolutions (+ 1 pooling kernel in fp16/fp32, class unknown)
    assert {k: v for k, v in counts.items() if k != "unknown"} == expected


# --- the 10.x layout (A100 ResNet, trex samples) ----------------------------------------------


def test_parse_a100_qat_layers() -> None:
    engine = load_layer_info(A100 / "qat.graph.json")
    raw = _raw(A100 / "qat.graph.json")
    assert engine.layout == "10.x"
    assert engine.io_tensors == raw["Bindings"] == ["input.1", "422"]
    assert [layer.name for layer in engine.layers] == [layer["Name"] for layer in raw["Layers"]]
    first, conv1 = engine.layers[0], engine.layers[1]
    assert first.name == "QuantizeLinear_2" and first.is_qdq and not first.is_reformat
    assert (first.inputs[0].dtype, first.outputs[0].dtype) == ("FP32", "INT8")
    assert first.inputs[0].dims == (32, 3, 224, 224)
    assert conv1.precision == "INT8" and conv1.kernel_class == "int8_dp4a" and conv1.parameter_type == "Convolution"
    assert conv1.onnx_nodes == []  # this layout has no Metadata
    reformats = [layer.name for layer in engine.layers if layer.is_reformat]
    assert reformats[:2] == [
        "Reformatting CopyNode for Output Tensor 0 to MaxPool_12",
        "Reformatting CopyNode for Input Tensor 0 to GlobalAveragePool_246",
    ]
    assert len(reformats) == 3 and reformats[2].startswith("Reformatting CopyNode for Input Tensor 0 to fc.weight")
    assert sum(layer.is_qdq for layer in engine.layers) == 10


def test_precision_is_first_input_type_and_tf32_from_kernel() -> None:
    engine = load_layer_info(A100 / "fp32.graph.json")
    by_name = {layer.name: layer for layer in engine.layers}
    assert by_name["Conv_0 + Relu_1"].precision == "FP32"  # scudnn: FP32 SIMT
    assert by_name["Conv_3 + Relu_4"].precision == "TF32"  # FP32 data on a TF32 tensor-core kernel
    qat = {layer.name: layer for layer in load_layer_info(A100 / "qat.graph.json").layers}
    mixed = qat["layer1.0.conv2.weight + QuantizeLinear_32 + Conv_34 + Add_36 + Relu_37"]
    assert [t.dtype for t in mixed.inputs] == ["INT8", "FP16"] and mixed.outputs[0].dtype == "FP16"
    assert mixed.precision == "INT8"


# --- the newer 10.16 layout (Location, StreamId, Metadata) ------------------------------------


def test_parse_trtexec_10_16_export_layer_info() -> None:
    engine = load_layer_info(TRTEXEC / "exportLayerInfo.json")
    assert engine.layout == "10.x-metadata"
    assert engine.io_tensors == ["x", "y", "z"]
    names = [layer.name for layer in engine.layers]
    assert names[:2] == ["node_conv2d + node_relu", "node_max_pool2d"]
    assert len(names) == 9
    by_name = {layer.name: layer for layer in engine.layers}
    conv = by_name["node_conv2d + node_relu"]
    assert conv.onnx_nodes == ["node_conv2d", "node_relu"]  # RS (0x1e) separated
    assert conv.inputs[0].location == "Device"
    assert conv.kernel_class == "fp32_simt" and conv.precision == "FP32"
    assert by_name["node_linear_myl4_0"].onnx_nodes == ["node_linear", "node_relu_2"]  # US (0x1f) separated
    assert by_name["node_linear_myl4_0"].type == "gemm"
    assert by_name["__myl_CastReshCast_myl4_4"].onnx_nodes == []  # empty Metadata
    assert by_name["__myl_CastReshCast_myl4_4"].precision == "INT32"
    assert [layer.precision for layer in engine.layers].count("FP32") == 8


def test_onnx_nodes_from_metadata() -> None:
    assert onnx_nodes_from_metadata("[ONNX Layer: a]\x1e[ONNX Layer: b]\x1f[ONNX Layer: a]") == ["a", "b"]
    assert onnx_nodes_from_metadata("[ONNX Layer: /blocks.0/attn/MatMul]") == ["/blocks.0/attn/MatMul"]
    assert onnx_nodes_from_metadata("") == [] and onnx_nodes_from_metadata(None) == []


# --- the 11.x layout (hand-made after NVIDIA's 11.0 IEngineInspector migration notes) -----------


def test_parse_11x_io_tensors_and_split_type_keys() -> None:
    engine = load_layer_info(HANDMADE / "layerinfo-11.x-handmade.json")
    assert engine.layout == "11.x"
    assert engine.io_tensors == ["input", "output"]
    q, conv, dq, softmax = engine.layers
    assert (q.inputs[0].dtype, q.outputs[0].dtype) == ("FP32", "INT8")
    assert q.inputs[0].raw_type == "Row major linear Float"
    assert conv.precision == "INT8" and conv.kernel_class == "int8_tc"
    assert conv.onnx_nodes == ["/conv1/Conv", "/relu1/Relu"]
    assert dq.is_qdq and dq.precision == "INT8" and dq.outputs[0].dtype == "FP16"
    assert softmax.precision == "FP16" and softmax.outputs[0].dtype == "FP32"


def test_split_keys_data_type_wins_over_format_words() -> None:
    tensor = {"Name": "a", "Format": "Channel major FP32 format", "DataType": "Half"}
    doc = {"Layers": [{"Name": "l", "Inputs": [tensor], "Outputs": []}], "I/O Tensors": []}
    assert parse_layer_info(doc).layers[0].inputs[0].dtype == "FP16"


# --- names-only and other shapes of the document ----------------------------------------------


def test_names_only_layer_information() -> None:
    names = ["conv1 + relu1", "Reformatting CopyNode for Input Tensor 0 to fc", "fc"]
    doc = {"Layers": names, "Bindings": ["in", "out"]}
    engine = parse_layer_info(doc)
    assert engine.layout == "names-only" and not engine.detailed
    assert [layer.precision for layer in engine.layers] == ["UNKNOWN"] * 3
    assert [layer.is_reformat for layer in engine.layers] == [False, True, False]
    assert engine.io_tensors == ["in", "out"]


def test_single_layer_and_bare_list() -> None:
    raw = _raw(TRTEXEC / "exportLayerInfo.json")["Layers"]
    single = parse_layer_info(raw[0])
    assert single.layout == "single-layer" and single.layers[0].name == "node_conv2d + node_relu"
    assert [layer.name for layer in parse_layer_info(raw).layers] == [layer["Name"] for layer in raw]


def test_bad_documents_give_one_line_errors(tmp_path: Path) -> None:
    log = TRTEXEC / "result-01.log"
    with pytest.raises(TrtqError, match="trtexec log.*--exportLayerInfo"):
        parse_layer_info_text(log.read_text(), source=str(log))
    with pytest.raises(TrtqError, match="not TensorRT layer information"):
        parse_layer_info({"layers": []})
    with pytest.raises(TrtqError, match="no 'Name'"):
        parse_layer_info({"Layers": [{"LayerType": "Reformat"}]})
    with pytest.raises(TrtqError, match="not found"):
        load_layer_info(tmp_path / "missing.json")
    # well-formed JSON with the wrong types in it: one-line errors, or the value ignored where it is optional
    with pytest.raises(TrtqError, match="'Inputs' is not a list"):
        parse_layer_info({"Layers": [{"Name": "a", "Inputs": 5}]})
    damaged = parse_layer_info({"Layers": [{"Name": "a", "LayerType": 1, "Origin": 2, "Metadata": 3, "TacticName": 4,
                                            "Outputs": [{"Name": "y", "Location": 5, "Format/Datatype": 6}]}]})
    layer = damaged.layers[0]
    assert (layer.type, layer.origin, layer.onnx_nodes, layer.tactic, layer.precision) == (
        None, None, [], None, "UNKNOWN")
    assert not layer.is_qdq and not layer.is_reformat and layer.outputs[0].location is None
