"""Parity never holds the decoder weights twice (issue 10): prefill and decode open one at a time.

ONNX Runtime on CPU loads an fp16 decoder once per session (widened to fp32), so the closing parity of a
7B-width export held two copies; the low-memory backend opens the two graphs alternately and parity
prefills every batch before it decodes any, so each opens once per stage.
"""

import numpy as np
import pytest

from engines.artifact import open_artifact
from engines.generate import generate_inputs
from engines.inputs import encode, stack_inputs
from engines.ort_runner import OrtBackend
from exporter import parity
from exporter.samples import PROMPTS, sample

from .test_export import _export


@pytest.fixture(scope="module")
def reroute_artifact(tmp_path_factory, tiny):
    return _export(tmp_path_factory, tiny, "reroute", 0.25)


class Recorder:
    """Wraps OrtBackend._open: which decoder sessions were open each time a graph opened."""

    def __init__(self, backend):
        self.opened, self.overlap = [], []
        original = backend._open

        def record(graph):
            self.opened.append(graph)
            self.overlap.append({"prefill", "decode"} <= set(backend.sessions) | {graph})
            return original(graph)

        backend._open = record


def _inputs(art, indices):
    model = art.manifest["model"]
    return [encode(art.processor(), [p], [img], model["image_token_id"], model["num_visual"])
            for p, img in (sample(i) for i in indices)]


def test_low_memory_backend_alternates_and_matches_eager(reroute_artifact):
    art = open_artifact(reroute_artifact)
    lean = OrtBackend(art, low_memory=True)
    assert lean.sessions == {}  # nothing opened before it is used
    seen = Recorder(lean)
    eager = OrtBackend(art)
    x = _inputs(art, [0])[0]
    want = generate_inputs(eager, x, 6)
    got = generate_inputs(lean, x, 6)
    assert got.generated == want.generated
    np.testing.assert_array_equal(got.prefill_logits, want.prefill_logits)
    assert seen.opened == ["vision", "embed", "prefill", "decode"]
    assert not any(seen.overlap), "prefill and decode were open together"
    assert set(lean.sessions) == {"vision", "embed", "decode"}
    lean.close()
    assert lean.sessions == {} and lean.runners == {}


def test_parity_greedy_opens_each_decoder_graph_once(reroute_artifact):
    """Five samples of one prompt length in batches of at most 4: two batches, yet prefill and decode
    open once each, and the tokens equal batch-by-batch generation on an eager backend."""
    art = open_artifact(reroute_artifact)
    inputs = _inputs(art, range(0, 5 * len(PROMPTS), len(PROMPTS)))  # one prompt, five images
    assert len({x.input_ids.shape for x in inputs}) == 1
    lean = OrtBackend(art, low_memory=True)
    seen = Recorder(lean)
    got = parity._greedy_all(lean, inputs, 4, max_batch=4)
    assert seen.opened.count("prefill") == 1 and seen.opened.count("decode") == 1
    eager = OrtBackend(art)
    want = [generate_inputs(eager, stack_inputs([x]), 4).generated[0] for x in inputs]
    assert got == want


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_comparator_runner_closes_the_sibling(reroute_artifact, graph):
    art = open_artifact(reroute_artifact)
    lean = OrtBackend(art, low_memory=True)
    other = "decode" if graph == "prefill" else "prefill"
    lean.comparator_runner(other)
    lean.comparator_runner(graph)
    assert graph in lean.sessions and other not in lean.sessions


def test_parity_refuses_in_one_line_what_cannot_fit(reroute_artifact):
    """`reroute parity` with ONNX Runtime estimates its peak from the artifact's weight bytes before loading."""
    from .test_streamed_export import _cli

    proc = _cli("parity", str(reroute_artifact), "--samples", "1", env={"REROUTE_MEMORY_BUDGET": "64MiB"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs about" in lines[0] and "GPU server" in lines[0], proc.stderr
