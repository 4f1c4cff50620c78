"""The lmms-eval ``reroute`` model on a local lmms-eval task, offline (skipped where lmms-eval is absent).

Run in a venv that has lmms-eval and this repository's ONNX deps, e.g. /work/venv-lmms:
``PYTHONPATH=$PWD /work/venv-lmms/bin/python -m pytest -q tests/test_lmms_model.py``.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the local task must not need the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (optional extra: pip install 'reroute[lmms]')")
pytest.importorskip("onnxruntime")

from exporter.samples import synthetic_image  # noqa: E402

LIMIT = 3
TASK_UTILS = '''
from PIL import Image

from exporter.evaluation.data import Item, valid_box
from exporter.evaluation.scoring import score_answer


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    item = Item(0, doc["image"], doc["question"], doc.get("answer") or "", doc["kind"], valid_box(doc.get("bbox")))
    return {"reroute_accuracy": float(score_answer(item, results[0]).correct)}
'''
TASK_YAML = '''
task: reroute_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 5
  until: []
process_results: !function utils.process_results
metric_list:
  - metric: reroute_accuracy
    aggregation: mean
    higher_is_better: true
'''


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    """A reroute dataset (absolute image paths, every line has an answer column) and an lmms-eval task over it."""
    root = tmp_path_factory.mktemp("lmms-task")
    lines = []
    for i in range(LIMIT):
        path = root / f"{i}.png"
        synthetic_image(i, size=(336, 336)).save(path)
        lines.append({"image": str(path), "question": f"What colour is disc {i}?", "answer": "red", "kind": "vqa",
                      "bbox": None})
    (root / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (root / "utils.py").write_text(TASK_UTILS)
    (root / "reroute_local.yaml").write_text(textwrap.dedent(TASK_YAML.format(data=root / "data.jsonl")))
    return root


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from exporter.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("lmms-art") / "pdrop"
    return str(export_artifact("llava-tiny", "pdrop", 1 / 9, str(out), dtype="fp32", parity_samples=0, quiet=True)[0])


def test_lmms_eval_runs_the_artifact_like_reroute_eval(local_task, artifact):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from exporter.evaluation.data import load_dataset
    from exporter.evaluation.lmms_model import RerouteArtifact
    from exporter.evaluation.runner import artifact_configs, run_eval

    model = RerouteArtifact(artifact=artifact, backend="onnxruntime")
    out = simple_evaluate(model=model, tasks=["reroute_local"], task_manager=TaskManager(include_path=str(local_task)),
                          limit=LIMIT, log_samples=True, batch_size=1)
    samples = sorted(out["samples"]["reroute_local"], key=lambda s: s["doc_id"])
    lmms_answers = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
                    for s in samples]
    assert len(lmms_answers) == LIMIT
    results = run_eval(artifact_configs([artifact], ["onnxruntime"]), load_dataset(local_task), batch_size=1,
                       max_new_tokens=5, quiet=True)
    assert lmms_answers == [r.answer for r in results[0].items]
    accuracy = out["results"]["reroute_local"]["reroute_accuracy,none"]
    assert accuracy == pytest.approx(sum(r.correct for r in results[0].items) / LIMIT)


def test_loglikelihood_follows_greedy_decoding(local_task, artifact):
    """Scoring the tokens greedy decoding produced: every step is greedy, and a changed last token scores lower."""
    from types import SimpleNamespace

    from PIL import Image

    from engines.generate import greedy_generate
    from exporter.evaluation.lmms_model import RerouteArtifact

    model = RerouteArtifact(artifact=artifact)
    image = Image.open(local_task / "0.png").convert("RGB")
    inputs = model._inputs("What is this?", image)
    tokens = greedy_generate(model.backend, inputs.input_ids, inputs.pixel_values, inputs.visual_start, 4,
                             None).generated[0]
    logprob, is_greedy = model._score(inputs, tokens)
    assert is_greedy and logprob <= 0
    changed = tokens[:-1] + [(tokens[-1] + 1) % 500]
    other_logprob, other_greedy = model._score(inputs, changed)
    assert not other_greedy and other_logprob < logprob
    # through lmms-eval's request form: a text continuation is tokenised without special tokens
    model.task_dict = {"t": {"test": [{"image": str(local_task / "0.png")}]}}
    request = SimpleNamespace(args=("What is this?", "ab", lambda d: [Image.open(d["image"])], 0, "t", "test"))
    (text_logprob, _), = model.loglikelihood([request])
    ids = model.processor.tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert text_logprob == pytest.approx(model._score(inputs, ids)[0])
