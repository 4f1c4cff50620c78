"""Qwen2.5-VL's export-form graphs, in torch and through ONNX Runtime, on two image sizes (different N_v).

- the vision graph (grid-dependent indices as inputs) equals transformers' vision tower;
- the dynamic prefill (N_v read from a shape, k_s computed in the graph) equals the per-image schedule;
- one exported file of each answers both image sizes; the dynamic pool ops' ONNX bodies and their
  numpy plugin references agree with torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from engines.onnx_functions import attach_pool_functions
from engines.qwen_vision_inputs import VISION_INDEX_INPUTS, vision_index_inputs
from engines.torch_runner import TorchBackend
from exporter.samples import synthetic_image
from graphs.capacity import CapacityError, stage_coefficients
from graphs.export_graphs import DynamicPrefillGraph
from graphs.qwen_vision_graph import QwenVisionGraph
from graphs.schedule import solve_schedule

SIZES = {144: (336, 336), 176: (448, 308)}
METHODS = [("fastv", 1 / 3), ("pdrop", 2 / 9), ("reroute-fastv", 1 / 9), ("reroute", 0.25), ("none", 1.0)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; qwen_tiny comes from there too


def _inputs(loaded, num_visual, seed=0):
    prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True)
    inputs = loaded.encode([prompt, prompt], [synthetic_image(seed + i, SIZES[num_visual]) for i in range(2)])
    assert inputs.num_visual == num_visual
    return inputs


def _export(module, args, path, dynamic_axes):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=18,
                          input_names=module.input_names(), output_names=module.output_names(),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    onnx.save(attach_pool_functions(onnx.load(str(path))), str(path))
    return str(path)


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _vision_args(loaded, inputs):
    index = vision_index_inputs(inputs.image_grid_thw, loaded.config.vision_config)
    return (torch.from_numpy(inputs.pixel_values), torch.from_numpy(inputs.image_grid_thw),
            *[torch.from_numpy(index[n]) for n in VISION_INDEX_INPUTS])


def test_vision_graph_equals_transformers_and_exports_once(qwen_tiny, tmp_path):
    graph = QwenVisionGraph(qwen_tiny.hf_model.model.visual).eval()
    cases = [_vision_args(qwen_tiny, _inputs(qwen_tiny, n)) for n in sorted(SIZES)]
    outputs = []
    for args, num_visual in zip(cases, sorted(SIZES)):
        with torch.no_grad():
            ref = qwen_tiny.hf_model.model.visual(args[0], grid_thw=args[1], return_dict=True).pooler_output
            out = graph(*args)
        assert out.shape == (2, num_visual, ref.shape[-1])
        assert (out.reshape(ref.shape) - ref).abs().max().item() <= 1e-5
        outputs.append(out.numpy())
    axes = {"pixel_values": {0: "patches"}, "image_grid_thw": {0: "B"}, "window_index": {0: "units"},
            "reverse_index": {0: "units"}, "rotary_pos": {0: "patches"}, "window_slots": {0: "windows"},
            "patch_slots": {0: "patches"}, "image_features": {0: "B", 1: "N_v"}}
    session = _session(_export(graph, cases[0], tmp_path / "vision.onnx", axes))
    names = [i.name for i in session.get_inputs()]
    assert names == graph.input_names()
    for args, expected in zip(cases, outputs):  # one file, two grids
        (got,) = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        assert np.abs(got - expected).max() <= 1e-4


def test_in_graph_capacities_equal_the_schedule():
    for method, ratio in METHODS[:4]:
        schedule = solve_schedule(method, ratio, 28, 576, at_least_one=True)
        coeffs = stage_coefficients(schedule, 3840)  # raises if any N_v in 1..3840 disagrees
        for n in (1, 3, 33, 144, 176, 3840):
            assert coeffs.capacities(n) == list(schedule.for_num_visual(n).k)
    # the release's ours_vs_pdrop config at avg128, as --layers/--keep-ratios give it
    release = solve_schedule("reroute", 0.25, 28, 576, layers=[2, 6, 13, 20],
                             keep_ratios=[0.2655, 0.2655, 0.1328, 0.0664], at_least_one=True)
    assert stage_coefficients(release, 3840).capacities(144) == [38, 38, 19, 9]
    with pytest.raises(CapacityError):
        stage_coefficients(release, 0)


def test_capacity_check_refuses_a_formula_that_drifts(monkeypatch):
    """An exact product (6 * 1/3 = 2) needs the schedule's epsilon: without it the integer formula
    gives 1 at N_v = 6 (round(2^50 / 3) * 6 = 2^51 - 2), and the check over 1..bound catches it."""
    import graphs.capacity as capacity

    third = solve_schedule("reroute-fastv", 1.0, 28, 576, layers=[3], keep_ratios=[1 / 3])
    assert capacity.stage_coefficients(third, 64).capacities(9) == [3]
    monkeypatch.setattr(capacity, "EPSILON", 0)
    with pytest.raises(CapacityError, match="N_v=6"):
        capacity.stage_coefficients(third, 64)


def _prefill_args(backend, inputs):
    features = backend.vision(inputs.pixel_values, inputs.image_grid_thw)
    embeds = backend.embed(inputs.input_ids, features)
    span = np.arange(inputs.visual_start, inputs.visual_start + inputs.num_visual, dtype=np.int64)
    return (torch.from_numpy(embeds), torch.tensor([inputs.visual_start]), torch.from_numpy(inputs.position_ids),
            torch.from_numpy(span))


@pytest.mark.parametrize("method,ratio", METHODS, ids=[m for m, _ in METHODS])
def test_dynamic_prefill_equals_per_image_schedule_in_torch_and_onnxruntime(qwen_tiny, tmp_path, method, ratio):
    schedule = solve_schedule(method, ratio, 28, qwen_tiny.num_visual, at_least_one=True)
    backend = TorchBackend(qwen_tiny, schedule)
    graph = DynamicPrefillGraph(backend.decoder.with_dynamic_capacity(qwen_tiny.num_visual)).eval()
    cases = []
    for num_visual in sorted(SIZES):
        inputs = _inputs(qwen_tiny, num_visual, seed=3)
        args = _prefill_args(backend, inputs)
        static = backend.prefill(args[0].numpy(), inputs.visual_start, inputs.position_ids, num_visual=num_visual)
        with torch.no_grad():
            out = graph(*args)
        np.testing.assert_array_equal(out[0].numpy(), static.logits)
        selections = [t.numpy() for t in out[1 + 2 * 28:]]
        assert len(selections) == len(schedule.layers)
        for got, want, k in zip(selections, static.selections, schedule.for_num_visual(num_visual).k):
            np.testing.assert_array_equal(got, want)
            assert got.shape == (2, k)
        cases.append((args, out))
    axes = {"inputs_embeds": {0: "B", 1: "T"}, "position_ids": {1: "B", 2: "T"}, "visual_span": {0: "N_v"},
            "logits": {0: "B"}}
    axes.update({n: {0: "B", 2: f"n{i}"} for i, n in enumerate(graph.output_names()[1:1 + 56])})
    axes.update({n: {0: "B", 1: f"k{i}"} for i, n in enumerate(graph.output_names()[1 + 56:])})
    path = _export(graph, cases[0][0], tmp_path / "prefill.onnx", axes)
    _check_topk_bounds(onnx.load(path), schedule)
    session = _session(path)
    fed = {i.name for i in session.get_inputs()}
    assert fed == (set(graph.input_names()) if schedule.routed else {"inputs_embeds", "position_ids"})
    for args, expected in cases:  # one file, N_v 144 and 176
        got = session.run(None, {n: a.numpy() for n, a in zip(graph.input_names(), args) if n in fed})
        assert np.abs(got[0] - expected[0].numpy()).max() <= 1e-4
        for g, e in zip(got[1:], expected[1:]):
            assert g.shape == tuple(e.shape)
        for g, e in zip(got[1 + 56:], expected[1 + 56:]):
            np.testing.assert_array_equal(g, e.numpy())


def _check_topk_bounds(model, schedule):
    """reroute check accepts the shape-derived K with N_v bounded by the manifest, and only then."""
    from engines.trt_check import lint_model, manifest_dim_bounds

    def topk_problems(bounds):
        return [p.reason for p in lint_model(model, "prefill", shape_inputs=None, dim_bounds=bounds)
                if "TopK" in p.reason]

    assert topk_problems(manifest_dim_bounds({"capacity": {"max_visual_tokens": 3840}})) == []
    if schedule.routed:  # two TopKs per decision
        assert len(topk_problems({})) == 2 * len(schedule.layers)
        assert any("over TensorRT's limit" in r for r in topk_problems({"N_v": 10**6}))


class _PoolOps(torch.nn.Module):
    """select -> gather -> scatter with N_v and k_s from shapes, as the dynamic prefill uses them."""

    def input_names(self):
        return ["q_last", "keys", "x", "visual_start", "visual_span"]

    def output_names(self):
        return ["selected", "compact", "scattered"]

    def forward(self, q_last, keys, x, visual_start, visual_span):
        from graphs.pool import pool_gather_dynamic, pool_scatter_dynamic, pool_select_dynamic

        n = torch._shape_as_tensor(visual_span)[0].reshape(1)  # [1]
        k = torch.clamp(torch.div(n, 3, rounding_mode="floor"), min=1)  # [1]
        selected = pool_select_dynamic(q_last, keys, visual_start, k=k, num_candidates=n, scale=0.25)
        compact = pool_gather_dynamic(x, selected, visual_start, num_candidates=n)
        return selected, compact, pool_scatter_dynamic(x, compact * 2, selected, visual_start, num_candidates=n)


def test_dynamic_pool_ops_bodies_and_plugin_references_agree_with_torch(tmp_path):
    from onnx.reference import ReferenceEvaluator

    from engines.plugin_reference import PLUGIN_OPS

    gen = torch.Generator().manual_seed(0)
    module = _PoolOps()

    def case(n_visual, t=20, v0=3):
        return (torch.randn(2, 4, 16, generator=gen), torch.randn(2, 2, t, 16, generator=gen),
                torch.randn(2, t, 8, generator=gen), torch.tensor([v0]), torch.arange(v0, v0 + n_visual))

    axes = {"keys": {2: "n"}, "x": {1: "n"}, "visual_span": {0: "N_v"}, "selected": {1: "k"},
            "compact": {1: "m"}}
    path = _export(module, case(9), tmp_path / "pool.onnx", axes)
    model = onnx.load(path)
    assert {n.op_type for n in model.graph.node if n.domain == "reroute"} == {
        "PoolSelectDynamic", "PoolGatherDynamic", "PoolScatterDynamic"}
    session = _session(path)
    # the plugin references stand in for the function bodies (drop them so the new ops are used)
    del model.functions[:]
    reference = ReferenceEvaluator(model, new_ops=PLUGIN_OPS)
    for n_visual in (9, 15):  # k = 3, then 5, from one file
        args = case(n_visual)
        with torch.no_grad():
            expected = [t.numpy() for t in module(*args)]
        feed = {n: a.numpy() for n, a in zip(module.input_names(), args)}
        assert expected[0].shape == (2, n_visual // 3)
        for got in (session.run(None, feed), reference.run(None, feed)):
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_allclose(got[1], expected[1], atol=1e-6)
            np.testing.assert_allclose(got[2], expected[2], atol=1e-6)


def test_window_slots_place_every_patch_once_in_its_window():
    from types import SimpleNamespace

    from engines.qwen_vision_inputs import window_patches

    config = SimpleNamespace(spatial_merge_size=2, window_size=112, patch_size=14)
    grid = np.array([[1, 22, 34], [1, 22, 34]])  # edge windows are partial (11 x 17 merge units, 4 x 4 per window)
    index = vision_index_inputs(grid, config)
    slots, where = index["window_slots"], index["patch_slots"]
    patches = int(grid[:, 1:].prod(1).sum())
    assert window_patches(config) == slots.shape[1] == 64
    assert np.array_equal(slots.reshape(-1)[where], np.arange(patches))  # patch p sits at its slot
    real = slots[slots < patches]
    assert np.array_equal(np.sort(real), np.arange(patches))  # every patch once, the rest is padding
    assert (slots == patches).any() and not (slots > patches).any()
    lengths = (slots < patches).sum(1)
    assert lengths.max() == 64 and lengths.min() < 64 and len(slots) == 2 * 3 * 5  # 3 x 5 windows per image
    # a window's members are consecutive in window order and stay within one image
    for row, n in zip(slots, lengths):
        assert np.array_equal(row[:n], np.arange(row[0], row[0] + n)) and row[0] // (patches // 2) == \
            (row[n - 1]) // (patches // 2)
