"""The analyses behind docs/GROUNDING.md's diagnostic figures, for one `llava-grounding` weights file.

- ``--errors N``: greedy answers to the val split's first N pictures' items, the wrong ones sorted by kind
  (grounding: another object, and whether of the same colour or shape, or the right one too loosely; VQA:
  another object's colour or shape, or a word no object in the picture has);
- ``--probe N``: a least-squares linear probe of colour and shape on the objects' patches of N val pictures
  (projected features, raw and RMS-normalised; even patches fit, odd ones scored);
- ``--layers``: Frobenius norms of every decoder layer's ``o_proj`` / ``down_proj`` (how far the layers the
  growth inserted as identities moved);
- ``--eval-json F``: from a ``reroute eval --json`` report, the grounding misses split into IoU 0 and loose,
  the median IoU and the unparseable boxes.

    python scripts/grounding_analysis.py assets/llava-grounding/model.safetensors --errors 100 --probe 60 --layers
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_grounding as train  # noqa: E402

RELATIONS = ("left of", "right of", "above", "below")


def load(weights: str):
    from safetensors.torch import load_file

    from exporter.presets import preset_processor

    model = train.build_untrained(0).eval()
    model.load_state_dict(load_file(weights))
    data = train.dialogue.Pictures(preset_processor(train.PRESET), model.config.image_token_id, 0, 6)
    return model, data


def grounding_error(box, item, shapes) -> str:
    from exporter.evaluation.scoring import iou

    target = next(s for s in shapes if np.allclose(s.normalised(4), item["bbox"]))
    ious = [iou(box, tuple(s.normalised(4))) for s in shapes]
    best = shapes[int(np.argmax(ious))]
    if max(ious) == 0:
        return "grounding: no object"
    if best is target:
        return "grounding: right object, IoU < 0.5"
    return ("grounding: another object, same colour" if best.colour == target.colour else
            "grounding: another object, same shape" if best.shape == target.shape else
            "grounding: another object")


def vqa_error(answer: str, item, shapes) -> str:
    relation = next(r for r in RELATIONS if f" {r} the " in item["question"])
    asked = "colour" if "colour" in item["question"] else "shape"
    if any(answer in (s.colour, s.shape) for s in shapes):
        return f"vqa: another object's {asked} ({relation})"
    return f"vqa: a {asked} no object has"


@torch.no_grad()
def errors(model, data, pictures: int) -> dict:
    from exporter.evaluation.scoring import iou, parse_box

    tok = data.tokenizer
    feats = train.frozen_features(model, data, "val", range(pictures))
    counts: Counter = Counter()
    for item in data.items("val", pictures):
        shapes = data.scene("val", item["picture"])[1]
        prompt = train.dialogue.first_prompt(tok, data.image_token_id, item["question"])
        tokens = train.greedy(model, prompt, feats[item["picture"]], data.image_token_id, tok.eos_token_id)
        answer = tok.decode(tokens, skip_special_tokens=True).strip()
        counts[item["kind"]] += 1
        if item["kind"] == "grounding":
            box = parse_box(answer)
            if box is None:
                counts["grounding: unparseable"] += 1
            elif iou(box, tuple(item["bbox"])) < 0.5:
                counts[grounding_error(box, item, shapes)] += 1
        elif answer != item["answer"]:
            counts[vqa_error(answer, item, shapes)] += 1
    return dict(sorted(counts.items()))


@torch.no_grad()
def probe(model, data, pictures: int) -> dict:
    feats = model.model.multi_modal_projector(train.frozen_features(model, data, "val", range(pictures)))
    feats = feats.flatten(0, 1)  # [pictures * 576, width]
    targets = [train.dialogue.patch_targets(data.scene("val", i)[1]) for i in range(pictures)]
    colour, kind = (torch.from_numpy(np.concatenate([t[k] for t in targets])) for k in (0, 1))
    inside = colour > 0
    out = {}
    for name, x in (("raw", feats[inside]), ("rms", torch.nn.functional.rms_norm(feats[inside], (feats.shape[-1],)))):
        fit = torch.arange(len(x)) % 2 == 0
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # [n, width + 1]: a bias column
        for label, y in (("colour", colour[inside]), ("shape", kind[inside])):
            w = torch.linalg.lstsq(x[fit], torch.nn.functional.one_hot(y).float()[fit]).solution
            out[f"{name} {label}"] = round(((x[~fit] @ w).argmax(-1) == y[~fit]).float().mean().item(), 3)
    return out


def layer_norms(model) -> list[dict]:
    return [{"layer": i, "o_proj": round(layer.self_attn.o_proj.weight.norm().item(), 3),
             "down_proj": round(layer.mlp.down_proj.weight.norm().item(), 3)}
            for i, layer in enumerate(model.model.language_model.layers)]


def eval_misses(report: Path) -> dict:
    config = json.loads(report.read_text())["configs"][0]
    grounding = [i for i in config["items"] if i["kind"] == "grounding"]
    ious = [i["iou"] for i in grounding if i.get("iou") is not None]
    return {"grounding": len(grounding), "misses": sum(not i["correct"] for i in grounding),
            "misses_iou_0": sum(x == 0 for x in ious), "misses_loose": sum(0 < x < 0.5 for x in ious),
            "unparseable": config["unparseable_boxes"], "median_iou": round(statistics.median(ious), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="?", default="assets/llava-grounding/model.safetensors")
    p.add_argument("--errors", type=int, metavar="N")
    p.add_argument("--probe", type=int, metavar="N")
    p.add_argument("--layers", action="store_true")
    p.add_argument("--eval-json", type=Path)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {"weights": args.weights}
    if args.errors or args.probe or args.layers:
        model, data = load(args.weights)
        if args.errors:
            result["errors"] = errors(model, data, args.errors)
        if args.probe:
            result["probe"] = probe(model, data, args.probe)
        if args.layers:
            result["layers"] = layer_norms(model)
    if args.eval_json:
        result["eval"] = eval_misses(args.eval_json)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
