"""Issue 13 items 1 and 2 through ONNX Runtime: mixed-length batches and requests joining a running batch.

Exported llava-tiny artifacts (one per method, exported once per module). A left-padded batch of 4 prompts
whose lengths and image positions differ gives each prompt its solo result: prefill logits within 1e-5,
the same selected indices, the same 32 greedy tokens. Requests that join a running decode batch between
steps (their caches left-padded into it) and leave when done get their solo tokens too.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.artifact import open_artifact
from engines.batching import RunningBatch
from engines.generate import greedy_generate
from engines.inputs import encode
from engines.ort_runner import OrtBackend
from graphs.schedule import METHODS
from tests.conftest import make_image

STEPS = 32
# text before the image differs (image position), questions differ (length)
PROMPTS = [
    "USER: <image>\nWhat is it? ASSISTANT:",
    "USER: Look at this photo I took yesterday. <image>\nWhere is the red ball? ASSISTANT:",
    "USER: Here: <image>\nDescribe the left part of the picture in a few words, please. ASSISTANT:",
    "USER: A picture. <image>\nCount. ASSISTANT:",
]


class _Exports(dict):
    """method -> artifact path, each exported on first use (once per module): ``-k`` runs export only theirs."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, method):
        from exporter.onnx_export import export_artifact

        self[method] = export_artifact("llava-tiny", method, 0.25, out=str(self.root / method), parity_samples=0,
                                       quiet=True)[0]
        return self[method]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("mixed"))


def _inputs(artifact):
    processor, model = artifact.processor(), artifact.manifest["model"]
    return [encode(processor, [p], [make_image(i)], model["image_token_id"], model["num_visual"])
            for i, p in enumerate(PROMPTS)]


def _admit(batch: RunningBatch, inputs, which: list[int], max_new: list[int]):
    return batch.admit(which, [inputs[i].input_ids for i in which],
                       np.concatenate([inputs[i].pixel_values for i in which]),
                       [inputs[i].visual_start for i in which], max_new)


@pytest.mark.parametrize("method", list(METHODS))
def test_padded_batch_of_four_prompts_equals_each_alone(artifacts, method, one_thread):
    artifact = open_artifact(artifacts[method])
    backend = OrtBackend(artifact, threads=1)
    inputs = _inputs(artifact)
    assert len({x.input_ids.shape[1] for x in inputs}) == 4 and len({x.visual_start for x in inputs}) == 4

    batch = RunningBatch(backend)
    finished = _admit(batch, inputs, [0, 1, 2, 3], [STEPS] * 4)
    pre = batch.last_prefill
    while len(batch):
        finished += batch.step()
    tokens = {s.request: s.tokens for s in finished}

    for i, x in enumerate(inputs):
        solo = greedy_generate(backend, x.input_ids, x.pixel_values, x.visual_start, STEPS)
        assert np.abs(pre.logits[i] - solo.prefill_logits[0]).max() <= 1e-5
        assert [s[i].tolist() for s in pre.selections] == [s[0].tolist() for s in solo.selections]
        assert tokens[i] == solo.generated[0] and len(tokens[i]) == STEPS
    if method != "none":
        assert pre.selections, "a routed artifact reports its selections"


def test_requests_joining_a_running_batch_get_their_solo_tokens(artifacts, one_thread):
    """A runs alone; after its 3rd decode step B (longer prompt) and C (shorter) join; after 5 more D joins.
    C stops early (12 tokens) and leaves while the others go on."""
    artifact = open_artifact(artifacts["reroute"])
    backend = OrtBackend(artifact, threads=1)
    inputs = _inputs(artifact)
    max_new = {0: STEPS, 1: STEPS, 2: 12, 3: STEPS}
    batch = RunningBatch(backend)
    finished = _admit(batch, inputs, [0], [max_new[0]])
    sizes = []
    for step in range(1, 80):
        if step == 4:
            finished += _admit(batch, inputs, [1, 2], [max_new[1], max_new[2]])
        if step == 9:
            finished += _admit(batch, inputs, [3], [max_new[3]])
        if not len(batch):
            break
        sizes.append(len(batch))
        finished += batch.step()
    assert 3 in sizes and 2 in sizes[sizes.index(3):], "C left while the others were decoding"
    tokens = {s.request: s.tokens for s in finished}
    assert sorted(tokens) == [0, 1, 2, 3]
    for i, x in enumerate(inputs):
        solo = greedy_generate(backend, x.input_ids, x.pixel_values, x.visual_start, max_new[i])
        assert tokens[i] == solo.generated[0], f"request {i}"


def test_server_batcher_joins_requests_between_decode_steps(artifacts):
    """The serving worker (engines/serving/continuous.py): B and C arrive after A's 3rd decode step and join
    A's batch; C (4 tokens) leaves early; every answer equals the request run alone."""
    import time

    from engines.serving.pipeline import Pipeline
    from tests.test_triton import _png

    pipeline = Pipeline(artifacts["reroute"], threads=1)
    try:
        specs = [(PROMPTS[0], 0, 24), (PROMPTS[1], 1, 16), (PROMPTS[2], 2, 4)]
        jobs = [pipeline.prepare(p.encode(), _png(seed), n) for p, seed, n in specs]
        batcher = pipeline.make_batcher()
        try:
            first = batcher.submit(jobs[0])
            deadline = time.monotonic() + 120
            while len(batcher.batches) < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            later = [batcher.submit(job) for job in jobs[1:]]
            answers = [f.result(timeout=300) for f in [first, *later]]
        finally:
            batcher.close()
        assert batcher.batches[:3] == [1, 1, 1] and max(batcher.batches) == 3, batcher.batches
        assert 2 in batcher.batches[batcher.batches.index(3):], "C left while A and B went on"
        for (p, seed, n), answer in zip(specs, answers):
            assert answer == pipeline.run([pipeline.prepare(p.encode(), _png(seed), n)])[0]
            assert len(answer[0]) == n or answer[0][-1] == pipeline.eos_token_id
    finally:
        pipeline.close()
