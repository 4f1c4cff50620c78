"""Training data and helpers for scripts/train_grounding.py: conversations, patch targets, scoring, init, saving."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import make_grounding_data as grounding

GRID = 24  # 336 / 14 patches a side
NUM_VISUAL = GRID * GRID
BINS = 101  # box coordinates 0.00 .. 1.00, the values the decoder writes
IGNORE = -100
SMOOTH_BINS = 1.5  # std, in bins, of the Gaussian the coordinate targets are spread over: near misses cost less


def coordinate_loss(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of [n, 101] logits against Gaussian-smoothed targets centred on ``bins`` [n].

    Plain cross-entropy treats 0.41 as wrong as 0.90 for 0.40 and gave the tower no gradient towards
    nearby values (measured: no progress in 150 steps); smoothing makes the target ordinal.
    """
    ks = torch.arange(BINS, dtype=torch.float32)
    target = torch.softmax(-((ks[None] - bins[:, None].float()) ** 2) / (2 * SMOOTH_BINS**2), dim=-1)
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def rec_box(shape) -> str:
    """LLaVA-1.5's REC answer, as the data script writes it: ``[0.12, 0.34, 0.56, 0.78]``."""
    return "[" + ", ".join(f"{v:.2f}" for v in shape.normalised(2)) + "]"


def conversation(rng, shapes, questions: int) -> list[tuple[str, str, int]]:
    """(question, answer, target) turns about one picture: the grounding of every object and up to
    ``questions`` relation questions, in random order; the first turn is a grounding or a question with
    equal odds (the eval asks one of them right after the image). ``target`` indexes ``shapes``: the object
    the answer is about (the boxed one; the one in the relation, whose colour or shape is the answer)."""
    boxes = [(grounding.REC_PROMPT.format(colour=s.colour, shape=s.shape), rec_box(s), n)
             for n, s in enumerate(shapes)]
    asked = []
    for name, anchor, other in grounding.unique_relations(shapes):
        target = shapes.index(other)
        asked.append((f"What colour is the shape {name} the {anchor.colour} {anchor.shape}?", other.colour, target))
        asked.append((f"What shape is {name} the {anchor.colour} {anchor.shape}?", other.shape, target))
    asked = [asked[int(i)] for i in rng.permutation(len(asked))[:questions]]
    pool = boxes if rng.integers(2) else asked
    first = pool[int(rng.integers(len(pool)))]
    rest = [qa for qa in boxes + asked if qa is not first]
    return [first] + [rest[int(i)] for i in rng.permutation(len(rest))]


def _piece(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def first_prompt(tokenizer, image_token_id: int, question: str) -> list[int]:
    """The eval's prompt (LLaVA-1.5 chat template, 576 image tokens) for one question, as token ids."""
    return ([tokenizer.bos_token_id] + _piece(tokenizer, "USER: ") + [image_token_id] * NUM_VISUAL
            + _piece(tokenizer, "\n") + _piece(tokenizer, f"{question} ASSISTANT:"))


def encode_conversation(tokenizer, image_token_id: int, qa) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, labels, focus) in the chat template's form: labels only on answers and their ``</s>``;
    ``focus`` holds, on those same positions, the turn's target object (-1 elsewhere, or without targets).

    Built piece by piece so the answer spans are known; no merge of the tokenizer crosses the pieces'
    borders, so they concatenate to the template's own tokenization (checked by the tests).
    """
    ids: list[int] = []
    labels: list[int] = []
    focus: list[int] = []
    for turn, (question, answer, *target) in enumerate(qa):
        prompt = (first_prompt(tokenizer, image_token_id, question) if turn == 0
                  else _piece(tokenizer, f"USER: {question} ASSISTANT:"))
        reply = _piece(tokenizer, f" {answer}") + [tokenizer.eos_token_id]
        ids += prompt + reply
        labels += [IGNORE] * len(prompt) + reply
        focus += [-1] * len(prompt) + [target[0] if target else -1] * len(reply)
    return ids, labels, focus


COVERAGE = 0.4  # a patch belongs to an object when at least this share of its 196 pixels is the object's


def object_patches(shapes) -> np.ndarray:
    """[n, 576] bool: the patches each object paints >= COVERAGE of (row-major, as CLIP orders them)."""
    masks = [grounding.painted_mask(s) for s in shapes]  # [336, 336] bool each
    # [336, 336] -> [24, 14, 24, 14] -> share of each patch painted -> [576]
    shares = [m.reshape(GRID, 14, GRID, 14).mean(axis=(1, 3)).ravel() for m in masks]
    return np.stack(shares) >= COVERAGE


def patch_targets(shapes, patches=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: colour class (0 none), shape class (0 none), the 4 coordinate bins of the box of the
    object that paints >= COVERAGE of the patch (0 where none; not scored there).

    Painted pixels, not the box: a diamond's box corners are background, and labelling them with the
    diamond's colour asked the tower for what the pixels do not show (colour accuracy stalled at ~0.75).
    """
    colours, kinds = list(grounding.COLOURS), list(grounding.SHAPES)
    colour = np.zeros(NUM_VISUAL, np.int64)
    kind = np.zeros(NUM_VISUAL, np.int64)
    box = np.zeros((NUM_VISUAL, 4), np.int64)
    for s, idx in zip(shapes, object_patches(shapes) if patches is None else patches):
        colour[idx] = colours.index(s.colour) + 1
        kind[idx] = kinds.index(s.shape) + 1
        box[idx] = np.round(np.asarray(s.normalised(2)) * 100).astype(np.int64)
    return colour, kind, box


class Pictures:
    """Deterministic pictures, patch targets and conversations drawn from the data script's scenes.

    Scenes are rendered once and kept (uint8, ~0.34 MB a picture): the vision phase passes over the
    training pictures several times, and rendering costs as much as a tower step.
    """

    def __init__(self, processor, image_token_id: int, seed: int, questions: int):
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.image_token_id, self.seed, self.questions = image_token_id, seed, questions
        self._scenes: dict[tuple[str, int], tuple[np.ndarray, list]] = {}
        self._patches: dict[tuple[str, int], np.ndarray] = {}

    def scene(self, split: str, i: int) -> tuple[np.ndarray, list]:
        """(uint8 [336, 336, 3] picture, shapes) of picture ``i`` of ``split``."""
        key = (split, i)
        if key not in self._scenes:
            image, shapes, _ = grounding.scene(self.seed, split, i)
            self._scenes[key] = (np.asarray(image), shapes)
        return self._scenes[key]

    def patches(self, split: str, i: int) -> np.ndarray:
        """[objects, 576] bool: ``object_patches`` of picture ``i`` of ``split``."""
        key = (split, i)
        if key not in self._patches:
            self._patches[key] = object_patches(self.scene(split, i)[1])
        return self._patches[key]

    def pixels(self, split: str, index) -> torch.Tensor:
        images = [self.scene(split, i)[0] for i in index]
        return torch.from_numpy(np.asarray(self.processor.image_processor(images, return_tensors="np")["pixel_values"]))

    def vision_batch(self, index):
        targets = [patch_targets(self.scene("train", i)[1], self.patches("train", i)) for i in index]
        return self.pixels("train", index), *(torch.from_numpy(np.stack(t)) for t in zip(*targets))

    def conversations(self, split: str, index, epoch: int = 0):
        """(input_ids, labels, focus) [B, T], right-padded, one conversation a picture (a new draw of turns
        each epoch); ``focus`` indexes ``patches(split, i)`` on answer positions (-1 elsewhere)."""
        rows = []
        for i in index:
            shapes = self.scene(split, i)[1]
            rng = np.random.default_rng([self.seed, 1000 + grounding.SPLITS[split], i, epoch])
            qa = conversation(rng, shapes, self.questions)
            rows.append(encode_conversation(self.tokenizer, self.image_token_id, qa))
        width = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
        labels = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in rows])
        focus = torch.tensor([r[2] + [-1] * (width - len(r[2])) for r in rows])
        return ids, labels, focus

    def items(self, split: str, count: int) -> list[dict]:
        """The split's first ``count`` pictures' items, exactly as make_grounding_data.py writes them."""
        out = []
        for i in range(count):
            _, shapes, rng = grounding.scene(self.seed, split, i)
            out += [dict(item, picture=i) for item in grounding.make_items(rng, "", shapes)]
        return out


def generation_accuracy(answer_fn, data: Pictures, feats: torch.Tensor, count: int) -> dict:
    """Greedy answers to the val split's first items, scored as ``reroute eval`` scores them."""
    from exporter.evaluation.data import Item
    from exporter.evaluation.scoring import score_answer

    hits = {"grounding": [], "vqa": []}
    for n, item in enumerate(data.items("val", min(len(feats), (count + 1) // 2))):
        prompt = first_prompt(data.tokenizer, data.image_token_id, item["question"])
        tokens = answer_fn(prompt, feats[item["picture"]])
        answer = data.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        bbox = tuple(item["bbox"]) if item["kind"] == "grounding" else None
        scored = Item(n, Path(item["image"]), item["question"], item["answer"], item["kind"], bbox)
        hits[item["kind"]].append(score_answer(scored, answer).correct)
    return {f"val_{kind}_acc": round(float(np.mean(v)), 4) for kind, v in hits.items() if v}


def scaled_init(model, seed: int) -> None:
    """Seeded init: linear/conv weights ~ N(0, 1/fan_in) (unit gain: at width 64, a fixed 0.02 would shrink
    the signal ~6x a layer), embeddings ~ N(0, 1), biases 0; the decoder's residual-branch outputs
    (``o_proj``, ``down_proj``) scaled by 1/sqrt(2 * layers) (GPT-2's recipe), so its 32 pre-norm blocks
    start near identity and train stably."""
    gen = torch.Generator().manual_seed(seed)
    layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        for name, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                std = module.weight[0].numel() ** -0.5
                if name.startswith("model.language_model") and name.endswith(("o_proj", "down_proj")):
                    std /= (2 * layers) ** 0.5
            elif isinstance(module, torch.nn.Embedding):
                std = 1.0
            else:
                continue
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        embeddings = model.model.vision_tower.embeddings
        embeddings.position_embedding.weight.copy_(grid_position_code(embeddings.position_embedding.weight.shape[1]))


def grid_position_code(width: int) -> torch.Tensor:
    """[1 + 576, width] 2-D sine/cosine code of each patch's row and column (CLS: zeros), unit variance.

    The tower's learned position embeddings start from it, so a patch knows where it lies from step 0:
    the box coordinates the tower must learn are positions.
    """
    quarter = width // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))  # [quarter] periods from ~6 to ~600 patches
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):  # row-major, as CLIP orders its patches
        angles = coord[:, None].float() * freqs[None]  # [576, quarter]
        parts += [angles.sin(), angles.cos()]
    code = torch.cat(parts, dim=1) * 2**0.5  # [576, 4 * quarter]
    out = torch.zeros(1 + NUM_VISUAL, width)
    out[1:, : code.shape[1]] = code
    return out


def save_weights(model, out: Path, preset: str) -> None:
    """``out/model.safetensors`` through a temp file renamed into place."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=out)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"preset": preset})
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the weights from other users of a shared checkout
        os.replace(tmp, out / "model.safetensors")
    except BaseException:
        os.unlink(tmp)
        raise
