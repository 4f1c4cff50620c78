"""The TensorRT plugin form of Qwen2.5-VL's dynamic-N_v graphs, checked on CPU.

``to_plugin_form`` turns the ``Pool*Dynamic`` nodes into plugin nodes whose size inputs are extents
(``ConstantOfShape``; engines/plugin_graph.py). The exact graph TensorRT parses, run by onnx.reference
with the numpy plugin ops, must equal ONNX Runtime on the exported graph for two image sizes (two N_v)
and for routing and deletion; ``reroute check --plugins`` must accept it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engines.artifact import open_artifact
from engines.plugin_graph import EXTENT_INPUTS, is_plugin_node, to_plugin_form
from engines.plugin_reference import reference_session
from exporter.cli import main
from exporter.samples import synthetic_image
from tests.test_qwen_export import SIZES  # N_v -> image size

METHODS = ("reroute", "pdrop")  # routing (P = N_v at every stage) and deletion (P = the previous k)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, qwen_tiny):
    from exporter.onnx_export import export_artifact

    root = tmp_path_factory.mktemp("qwen-plugins")
    return {m: export_artifact("qwen2.5-vl-tiny", m, 0.25, out=str(root / m), parity_samples=0, quiet=True,
                               loaded=qwen_tiny)[0] for m in METHODS}


def _prefill_feeds(art, backend, size):
    from engines.qwen_inputs import encode

    x = encode(art.processor(), art.hf_config(), ["<|vision_start|><|image_pad|><|vision_end|>What is it?"],
               [synthetic_image(3, size)])
    embeds = backend.embed(x.input_ids, backend.vision(x.pixel_values, x.image_grid_thw))
    return x.num_visual, {"inputs_embeds": embeds, "visual_start": np.array([x.visual_start]),
                          "position_ids": x.position_ids,
                          "visual_span": np.arange(x.visual_start, x.visual_start + x.num_visual)}


@pytest.mark.parametrize("method", METHODS)
def test_plugin_form_matches_onnxruntime_on_two_sizes(artifacts, method):
    from engines.ort_runner import OrtBackend

    art = open_artifact(artifacts[method])
    exported = onnx.load(str(art.graph_path("prefill")))
    model = to_plugin_form(exported)
    assert not model.functions
    pools = [n for n in model.graph.node if n.domain == "reroute"]
    assert pools and all(is_plugin_node(n) for n in pools)
    kinds = {n.op_type for n in pools}  # deletion (pdrop) scatters nothing back
    assert kinds == set(EXTENT_INPUTS) if method == "reroute" else kinds == {"PoolSelectDynamic", "PoolGatherDynamic"}
    # every size input of a pool node is now an extent made just for it
    producers = {out: n for n in model.graph.node for out in n.output}
    uses = [name for n in model.graph.node for name in n.input]
    for node in pools:
        for i in EXTENT_INPUTS[node.op_type]:
            assert producers[node.input[i]].op_type == "ConstantOfShape" and uses.count(node.input[i]) == 1
    onnx.checker.check_model(model)
    session, backend = reference_session(model), OrtBackend(art)
    names = [o.name for o in model.graph.output]
    try:
        for n_visual, size in SIZES.items():
            got_n, feeds = _prefill_feeds(art, backend, size)
            assert got_n == n_visual
            got = dict(zip(names, session.run(None, feeds)))
            want = backend.run("prefill", feeds)
            for name in names:
                if name.startswith("routing."):
                    assert np.array_equal(got[name], want[name]), (n_visual, name)
                else:
                    assert got[name].shape == want[name].shape, (n_visual, name)
                    assert np.abs(got[name] - want[name]).max() <= 1e-5, (n_visual, name)
    finally:
        backend.close()


def test_check_accepts_the_plugin_form(capsys, artifacts):
    for method in METHODS:
        assert main(["check", str(artifacts[method]), "--plugins"]) == 0, capsys.readouterr()
        assert "ok:" in capsys.readouterr().out


# -- the kernel cases of the dynamic ops (run on a GPU by tests/test_gpu_harness.py and scripts/gpu_check.py) --


def test_dynamic_kernel_cases_take_the_schedules_sizes_up_to_the_bound():
    from graphs.schedule import DELETE, ROUTE, solve_schedule
    from engines.plugins.kernel_cases import (DYNAMIC_KEEP_RATIOS, DYNAMIC_VISUAL, QWEN_VISUAL_BOUND, all_cases,
                                              dynamic_cases, dynamic_sizes)

    assert max(DYNAMIC_VISUAL) == QWEN_VISUAL_BOUND and min(DYNAMIC_VISUAL) == 1
    for n_visual in DYNAMIC_VISUAL:
        wanted = set()
        for method, action in (("reroute", ROUTE), ("pdrop", DELETE)):
            schedule = solve_schedule(method, 0.25, 28, QWEN_VISUAL_BOUND, layers=[2, 6, 13, 20],
                                      keep_ratios=list(DYNAMIC_KEEP_RATIOS), at_least_one=True)
            assert schedule.action == action
            image = schedule.for_num_visual(n_visual)
            wanted |= {(image.candidates(s), k) for s, k in enumerate(image.k)}
        assert set(dynamic_sizes(n_visual)) == wanted, n_visual
    cases = dynamic_cases()
    names = {c.name for c in all_cases()}
    assert all(c.name in names for c in cases)  # the GPU check runs them with the others
    sizes = {(c.op, c.inputs["num_candidates"], c.expected.shape[1] if c.op == "select" else None) for c in cases}
    assert ("select", QWEN_VISUAL_BOUND, 254) in sizes and ("select", 1, 1) in sizes
    assert {c.op for c in cases} == {"select", "gather", "scatter"}


def test_dynamic_kernel_cases_pass_the_reference_and_catch_damage():
    from engines.plugins.kernel_cases import compare, dynamic_cases, run_case
    from tests.test_gpu_harness import ReferenceHarness

    cases = dynamic_cases()
    assert all(run_case(ReferenceHarness(), c)["passed"] for c in cases)

    def flip(out):
        out = out.copy()
        out.reshape(-1).view(np.uint8)[0] ^= 1
        return out

    damaged = [run_case(ReferenceHarness(flip), c) for c in cases]
    assert not any(r["passed"] for r in damaged)
    assert compare(cases[0], cases[0].expected)["passed"]


def test_an_older_vision_graph_is_refused_in_one_line(artifacts):
    """Artifacts exported before the vision graph took window batches name inputs preprocessing no longer makes."""
    from engines.errors import RerouteError
    from engines.ort_runner import OrtBackend

    art = open_artifact(artifacts["reroute"])
    backend = OrtBackend(art)
    try:
        backend.dtypes["vision"]["window_segments"] = np.dtype(np.int64)  # as the older graph declared
        with pytest.raises(RerouteError, match="window_segments, inputs of an older export; re-export"):
            backend.vision(np.zeros((4, 1176), np.float32), np.array([[1, 2, 2]]))
    finally:
        backend.close()
