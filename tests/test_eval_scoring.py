"""`reroute eval` without a model: data loading, scoring, confidence intervals and the report."""

from __future__ import annotations

import json
import math

import pytest

from engines.errors import RerouteError
from exporter.evaluation.data import load_dataset
from exporter.evaluation.report import build_report, format_text
from exporter.evaluation.runner import ConfigResult, ItemResult
from exporter.evaluation.scoring import iou, normalize_answer, parse_box, score_answer
from exporter.evaluation.stats import paired_difference, wilson_interval

# Five usable items with known answers, three malformed lines and one missing image.
LINES = [
    {"image": "a.png", "question": "What colour is the shape left of the blue circle?", "answer": "red",
     "kind": "vqa"},
    {"image": "a.png", "question": "What colour is the square?", "answer": "Blue", "kind": "vqa"},
    {"image": "b.png", "question": "Where is the red triangle?", "answer": "[0.1, 0.1, 0.5, 0.5]",
     "kind": "grounding", "bbox": [0.1, 0.1, 0.5, 0.5]},
    "this line is not JSON",
    {"image": "b.png", "question": "Where is the green circle?", "kind": "grounding", "bbox": [0.5, 0.5, 0.9, 0.9]},
    {"image": "a.png", "question": "What colour?", "kind": "vqa"},  # no answer: malformed
    {"image": "b.png", "question": "Where is it?", "kind": "grounding", "bbox": [0.5, 0.1, 0.2, 0.3]},  # x1 < x0
    {"image": "gone.png", "question": "Where is the blue star?", "kind": "grounding", "bbox": [0, 0, 1, 1]},
    {"image": "a.png", "question": "Where is the yellow square?", "kind": "grounding", "bbox": [0.2, 0.2, 0.6, 0.6]},
]
# What a model answered, per usable item (by line number), and whether that is right.
ANSWERS = {
    1: ("Red.", True),  # normalised exact match
    2: ("the green", False),
    3: ("[0.12, 0.1, 0.5, 0.52]", True),  # IoU 0.907
    5: ("(0.5 0.5 0.7 0.7)", False),  # IoU 0.25
    9: ("somewhere on the left", False),  # unparseable box
}


@pytest.fixture()
def dataset_dir(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (336, 336), (40, 80, 120)).save(tmp_path / name)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in LINES)
    (tmp_path / "data.jsonl").write_text(text + "\n\n")
    return tmp_path


def test_hand_written_dataset_is_counted_and_scored_exactly(dataset_dir):
    data = load_dataset(dataset_dir)
    assert [it.index for it in data.items] == [1, 2, 3, 5, 9]
    assert data.counts() == {"items": 5, "items_vqa": 2, "items_grounding": 3, "malformed_lines": 3,
                             "missing_images": 1}
    assert [n for n, _ in data.malformed] == [4, 6, 7]
    assert data.missing_images[0][0] == 8
    scores = {it.index: score_answer(it, ANSWERS[it.index][0]) for it in data.items}
    assert {i: s.correct for i, s in scores.items()} == {i: ok for i, (_, ok) in ANSWERS.items()}
    assert scores[3].iou == pytest.approx(0.152 / 0.1676)
    assert scores[5].iou == pytest.approx(0.25)
    assert scores[9].unparseable and scores[9].iou is None
    assert not any(scores[i].unparseable for i in (1, 2, 3, 5))


def test_report_from_scored_items(dataset_dir):
    data = load_dataset(dataset_dir)
    results = []
    for method, correct_lines in (("reroute", {1, 3}), ("pdrop", {1})):
        items = [ItemResult(it.index, it.kind, "x", it.index in correct_lines, it.index == 9) for it in data.items]
        results.append(ConfigResult(method, 1 / 9, "torch", f"{method} 1/9", {"flops_ratio": 0.2, "kv_bytes": 1024},
                                    items))
    report = build_report(data, results, {})
    reroute = report["configs"][0]
    assert reroute["accuracy"]["all"]["correct"] == 2 and reroute["accuracy"]["all"]["n"] == 5
    assert reroute["accuracy"]["vqa"]["correct"] == 1 and reroute["accuracy"]["grounding"]["correct"] == 1
    assert reroute["accuracy"]["all"]["ci"] == pytest.approx(list(wilson_interval(2, 5)))
    assert reroute["unparseable_boxes"] == 1
    pair = next(p for p in report["pairs"] if p["kind"] == "all")
    assert (pair["method_a"], pair["method_b"], pair["only_a"], pair["only_b"]) == ("reroute", "pdrop", 1, 0)
    assert pair["difference"] == pytest.approx(0.2)
    text = format_text(report)
    assert "3 malformed lines, 1 missing images" in text and "40.0%" in text
    assert json.loads(json.dumps(report))["items"] == 5


def test_limit_keeps_first_usable_items(dataset_dir):
    assert [it.index for it in load_dataset(dataset_dir, limit=3).items] == [1, 2, 3]


@pytest.mark.parametrize("content", ['[{"image": "a.png"}]', "image,question\na.png,what?\n", ""])
def test_not_jsonl_is_one_error(tmp_path, content):
    (tmp_path / "data.jsonl").write_text(content)
    with pytest.raises(RerouteError, match="not JSONL"):
        load_dataset(tmp_path)


def test_binary_file_and_missing_folder(tmp_path):
    (tmp_path / "data.jsonl").write_bytes(b"\x89PNG\xff\xfe\x00")
    with pytest.raises(RerouteError, match="not JSONL"):
        load_dataset(tmp_path)
    with pytest.raises(RerouteError, match="dataset not found"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("text,expected", [
    ("[0.1, 0.2, 0.3, 0.4]", (0.1, 0.2, 0.3, 0.4)),
    ("The box is [0.10,0.20,0.30,0.40].", (0.1, 0.2, 0.3, 0.4)),
    ("(.1 .2 .3 .4)", (0.1, 0.2, 0.3, 0.4)),
    ("x0=0, 0, 1, 1", (0.0, 0.0, 1.0, 1.0)),
    ("[0.1, 0.2, 0.3]", None),  # three numbers
    ("[12, 20, 30, 40]", None),  # pixels, not normalised
    ("[0.5, 0.2, 0.3, 0.4]", None),  # x1 < x0
    ("left", None),
    ("", None),
])
def test_parse_box(text, expected):
    box = parse_box(text)
    assert box == (pytest.approx(expected) if expected else None)


def test_iou_and_normalisation():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0
    assert iou((0, 0, 0.5, 1), (0, 0, 1, 1)) == pytest.approx(0.5)
    assert normalize_answer("  The RED, circle! ") == "red circle"
    assert normalize_answer("an apple") == normalize_answer("Apple.")


def test_wilson_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _paired(both, only_a, only_b, neither):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return paired_difference(a, b)


def test_newcombe_paired_interval_properties():
    d = _paired(12, 9, 2, 21)
    assert d["difference"] == pytest.approx(7 / 44)
    low, high = d["ci"]
    assert low < d["difference"] < high and -1 <= low and high <= 1
    # identical outcomes: no difference; swapping a and b mirrors the interval
    same = _paired(10, 0, 0, 10)
    assert same["difference"] == 0 and same["ci"][0] <= 0 <= same["ci"][1]
    mirror = _paired(12, 2, 9, 21)
    assert mirror["ci"] == pytest.approx((-high, -low))
    # phi = 0 (a and b independent): the unpaired hybrid Wilson interval of Newcombe's method 10
    ind = _paired(4, 4, 4, 4)
    p, (l1, u1) = 0.5, wilson_interval(8, 16)
    assert ind["ci"] == pytest.approx((-math.hypot(p - l1, u1 - p), math.hypot(u1 - p, p - l1)))
    # positive correlation narrows the interval compared with independence at the same margins
    assert (d["ci"][1] - d["ci"][0]) < (_paired(6, 15, 8, 15)["ci"][1] - _paired(6, 15, 8, 15)["ci"][0])


def test_batches_share_a_prompt_length_in_a_fixed_order():
    from exporter.evaluation.data import Item
    from exporter.evaluation.runner import batches

    items = [Item(i, None, "q", "a", "vqa") for i in range(1, 8)]
    lengths = {1: 30, 2: 31, 3: 30, 4: 30, 5: 31, 6: 30, 7: 29}
    groups = [[it.index for it in b] for b in batches(items, lengths, 3)]
    assert groups == [[7], [1, 3, 4], [6], [2, 5]]


def test_progress_live_line_and_plain_lines():
    import io

    from exporter.evaluation.progress import ItemProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    live, plain = Tty(), io.StringIO()
    for stream in (live, plain):
        progress = ItemProgress(2, 4, stream=stream)
        progress.start("pdrop r=0.1111 torch")
        progress.advance(2)
        progress.finish()
    assert "\r" in live.getvalue() and "[1/2] pdrop r=0.1111 torch: 2/4 items" in live.getvalue()
    lines = plain.getvalue().splitlines()  # a log: whole lines (half-way, closing), no carriage return
    assert len(lines) == 2 and all(x.startswith("[1/2] pdrop r=0.1111 torch: 2/4 items") for x in lines)
    assert "\r" not in plain.getvalue() and "\033" not in plain.getvalue()
    quiet = io.StringIO()
    progress = ItemProgress(1, 1, quiet=True, stream=quiet)
    progress.start("x"), progress.advance(1), progress.finish()
    assert quiet.getvalue() == ""


def test_progress_plain_lines_every_tenth_or_30_seconds():
    """Not a terminal: a line per 10% of the items, or after 30 s without one, and a closing line."""
    import io

    from exporter.evaluation.progress import ItemProgress

    now = [0.0]
    stream = io.StringIO()
    progress = ItemProgress(1, 100, stream=stream, clock=lambda: now[0])
    progress.start("reroute r=0.1111 onnxruntime")
    assert stream.getvalue() == ""  # nothing before the first item
    for _ in range(25):  # 4 items per second: 10% every 2.5 s
        now[0] += 1.0
        progress.advance(4)
    now[0] += 1.0
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == [12, 20, 32, 40, 52, 60, 72, 80, 92, 100]  # first batch past each tenth, then the closing line
    assert lines[-1].endswith("in 26.0 s") and lines[3].startswith("[1/1] reroute r=0.1111 onnxruntime: 40/100")

    slow, now[0] = io.StringIO(), 0.0
    progress = ItemProgress(1, 1000, stream=slow, clock=lambda: now[0])
    progress.start("none r=1.0000 torch")
    for _ in range(7):  # 1 item per 10 s: 10% is hours away, so a line every 30 s
        now[0] += 10.0
        progress.advance(1)
    assert [int(x.split(": ")[1].split("/")[0]) for x in slow.getvalue().splitlines()] == [3, 6]


def test_markdown_report_and_plot(dataset_dir, tmp_path):
    from exporter.evaluation.markdown import write_markdown

    data = load_dataset(dataset_dir)
    results = []
    for method, ratio, flops_ratio, right in (("none", 1.0, 1.0, {1, 2, 3}), ("pdrop", 1 / 9, 0.09, {1}),
                                              ("reroute", 1 / 9, 0.1, {1, 3}), ("reroute", 1 / 3, 0.3, {1, 2, 3})):
        items = [ItemResult(it.index, it.kind, "x", it.index in right) for it in data.items]
        results.append(ConfigResult(method, ratio, "torch", method, {"flops_ratio": flops_ratio, "kv_bytes": 2**20},
                                    items))
    report = build_report(data, results, {})
    out = tmp_path / "out"
    out.mkdir()
    plot = write_markdown(report, str(out / "eval.md"))
    text = (out / "eval.md").read_text()
    assert plot.read_bytes()[:4] == b"\x89PNG" and "![accuracy against FLOPs](eval.png)" in text
    assert "| reroute | 0.3333 | torch | 0.300x | 1.00 | 60.0% [" in text
    assert "reroute - pdrop at r=0.1111 on torch (all): +20.0 pts" in text
    assert "line 4: not valid JSON" in text and "gone.png" in text
    assert sorted(p.name for p in out.iterdir()) == ["eval.md", "eval.png"]  # no temp files left
    with pytest.raises(RerouteError, match="does not exist"):
        write_markdown(report, str(tmp_path / "nope" / "eval.md"))
