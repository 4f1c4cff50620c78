"""Train the ``llava-grounding`` preset from scratch on the synthetic grounding task (issue 14), on CPU.

The model is the preset's LLaVA-1.5 structure (CLIP 336/14 -> 576 visual tokens, a 32-layer Llama decoder,
small widths; see exporter/presets.py). Training has two phases, both seeded and deterministic:

1. **vision** (cheap: the tower alone): the CLIP tower and projector learn, through throw-away linear heads
   on the projector's output, what lies under each patch: colour, shape and the box of the object whose
   box holds the patch centre. This is a dense signal (576 labels a picture) that the 32-layer decoder
   could not get from one answer per picture in the CPU budget; the heads are not part of the model.
2. **decoder**: the whole model (tower frozen) on multi-turn conversations about training pictures
   (LLaVA-1.5 trains on multi-turn conversations too), loss on answer tokens only. Boxes are answered in a
   compact form the scorer reads, ``[0.12,0.34,0.56,0.78]``; the first turn is exactly the eval prompt.

Pictures come from ``scripts/make_grounding_data.py``'s train split (same seed), drawn in memory. The
log (``train_log.jsonl``: loss and teacher-forced answer-token accuracy on held-out val pictures) is the
learning curve. Weights are written atomically to ``OUT/model.safetensors`` at every evaluation.

    python scripts/train_grounding.py --out assets/llava-grounding   # the defaults wrote the shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import make_grounding_data as grounding  # noqa: E402

from exporter.presets import build_processor, preset_config  # noqa: E402

PRESET = "llava-grounding"
GRID = 24  # 336 / 14 patches a side
IGNORE = -100


def compact_box(shape) -> str:
    return "[" + ",".join(f"{v:.2f}" for v in shape.normalised(2)) + "]"


def conversation(rng, shapes, turns: int) -> list[tuple[str, str]]:
    """(question, answer) turns about one picture: groundings of its objects and relation questions.

    The first turn is a grounding or a question with equal odds (the eval asks one of them right after
    the image); the rest follow in random order.
    """
    boxes = [(grounding.REC_PROMPT.format(colour=s.colour, shape=s.shape), compact_box(s)) for s in shapes]
    questions = []
    for name, anchor, other in grounding.unique_relations(shapes):
        questions.append((f"What colour is the shape {name} the {anchor.colour} {anchor.shape}?", other.colour))
        questions.append((f"What shape is {name} the {anchor.colour} {anchor.shape}?", other.shape))
    pool = boxes if rng.integers(2) else questions
    first = pool[int(rng.integers(len(pool)))]
    rest = [qa for qa in boxes + questions if qa is not first]
    return [first] + [rest[int(i)] for i in rng.permutation(len(rest))[: turns - 1]]


def encode_conversation(tokenizer, image_token_id: int, num_visual: int, qa) -> tuple[list[int], list[int]]:
    """(input_ids, labels) in the chat template's form, labels only on answers and their ``</s>``.

    Built piece by piece so the answer spans are known; the preset's tokenizer has no merges, so the
    pieces concatenate to the template's own tokenization (checked by the tests).
    """
    def piece(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for turn, (question, answer) in enumerate(qa):
        prompt = piece("USER: ")
        if turn == 0:
            prompt += [image_token_id] * num_visual + piece("\n")
        prompt += piece(f"{question} ASSISTANT:")
        reply = piece(f" {answer}") + [tokenizer.eos_token_id]
        ids += prompt + reply
        labels += [IGNORE] * len(prompt) + reply
    return ids, labels


def patch_targets(shapes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: colour class (0 none), shape class (0 none), box of the object holding its centre."""
    colours, kinds = list(grounding.COLOURS), list(grounding.SHAPES)
    colour = np.zeros(GRID * GRID, np.int64)
    kind = np.zeros(GRID * GRID, np.int64)
    box = np.zeros((GRID * GRID, 4), np.float32)
    centres = np.arange(GRID) * 14 + 7
    for s in shapes:
        x0, y0, x1, y1 = s.box
        rows = np.flatnonzero((centres >= y0) & (centres < y1))
        cols = np.flatnonzero((centres >= x0) & (centres < x1))
        idx = (rows[:, None] * GRID + cols[None, :]).ravel()  # [n] patch indices, row-major as CLIP's
        colour[idx] = colours.index(s.colour) + 1
        kind[idx] = kinds.index(s.shape) + 1
        box[idx] = np.asarray(s.box, np.float32) / grounding.SIZE
    return colour, kind, box


class Batches:
    """Deterministic training / validation batches drawn from the data script's scenes."""

    def __init__(self, processor, image_token_id: int, num_visual: int, seed: int):
        self.processor, self.image_token_id, self.num_visual, self.seed = processor, image_token_id, num_visual, seed

    def pixels(self, images) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.processor.image_processor(images, return_tensors="np")["pixel_values"]))

    def vision(self, step: int, size: int):
        scenes = [grounding.scene(self.seed, "train", step * size + b) for b in range(size)]
        targets = [patch_targets(shapes) for _, shapes, _ in scenes]
        stack = [torch.from_numpy(np.stack(t)) for t in zip(*targets)]
        return self.pixels([img for img, _, _ in scenes]), *stack

    def dialogue(self, split: str, first: int, size: int, turns: int):
        """(input_ids, labels, pixel_values), right-padded; pictures first..first+size-1 of ``split``."""
        rows, images = [], []
        for index in range(first, first + size):
            image, shapes, _ = grounding.scene(self.seed, split, index)
            rng = np.random.default_rng([self.seed, 1000 + grounding.SPLITS[split], index])
            qa = conversation(rng, shapes, turns)
            rows.append(encode_conversation(self.processor.tokenizer, self.image_token_id, self.num_visual, qa))
            images.append(image)
        width = max(len(ids) for ids, _ in rows)
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows])
        labels = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in rows])
        mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows])
        return ids, labels, mask, self.pixels(images)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vision(model, batches: Batches, args, log) -> None:
    hidden = model.config.text_config.hidden_size
    heads = torch.nn.ModuleDict({"colour": torch.nn.Linear(hidden, len(grounding.COLOURS) + 1),
                                 "shape": torch.nn.Linear(hidden, len(grounding.SHAPES) + 1),
                                 "box": torch.nn.Linear(hidden, 4)})
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.0)
    for step in range(args.vision_steps):
        pixels, colour, kind, box = batches.vision(step, args.vision_batch)
        feats = torch.stack(model.model.get_image_features(pixels).pooler_output)  # [B, 576, hidden]
        inside = colour > 0
        loss = (torch.nn.functional.cross_entropy(heads["colour"](feats).flatten(0, 1), colour.flatten())
                + torch.nn.functional.cross_entropy(heads["shape"](feats).flatten(0, 1), kind.flatten())
                + 10 * torch.nn.functional.l1_loss(torch.sigmoid(heads["box"](feats))[inside], box[inside]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vision_steps, args.vision_lr, 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.vision_steps - 1:
            log({"phase": "vision", "step": step, "loss": round(loss.item(), 4)})


@torch.no_grad()
def evaluate(model, val) -> dict:
    """Teacher-forced loss and answer-token accuracy on the fixed validation batch."""
    model.eval()
    ids, labels, mask, pixels = val
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, :-1]
    target = labels[:, 1:]
    scored = target != IGNORE
    loss = torch.nn.functional.cross_entropy(logits[scored], target[scored]).item()
    acc = (logits.argmax(-1)[scored] == target[scored]).float().mean().item()
    model.train()
    return {"val_loss": round(loss, 4), "val_token_acc": round(acc, 4)}


def train_decoder(model, batches: Batches, args, log, save) -> None:
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    val = batches.dialogue("val", 0, args.val_pictures, 1)
    last = min(args.steps, args.stop_after or args.steps) - 1
    for step in range(last + 1):
        ids, labels, mask, pixels = batches.dialogue("train", step * args.batch, args.batch, args.turns)
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        record = {"phase": "decoder", "step": step, "loss": round(loss.item(), 4)}
        if (step + 1) % args.eval_every == 0 or step == last:
            record.update(evaluate(model, val))
            save()
        log(record)


def save_weights(model, out: Path) -> None:
    """``out/model.safetensors`` through a temp file renamed into place."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=out)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"preset": PRESET})
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the weights from other users of a shared checkout
        os.replace(tmp, out / "model.safetensors")
    except BaseException:
        os.unlink(tmp)
        raise


def build_untrained(seed: int):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(preset_config(PRESET))
    return model.train()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for model.safetensors and train_log.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vision-steps", type=int, default=90)
    p.add_argument("--vision-batch", type=int, default=8)
    p.add_argument("--vision-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=80, help="decoder steps")
    p.add_argument("--stop-after", type=int,
                   help="stop after this many decoder steps, the learning-rate schedule still spanning --steps "
                        "(the weights equal those a full run saved at that step)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--turns", type=int, default=2, help="question/answer turns per picture")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--val-pictures", type=int, default=8)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_untrained(args.seed)
    config = model.config
    processor = build_processor(config.text_config.vocab_size)
    batches = Batches(processor, config.image_token_id, GRID * GRID, args.seed)
    start = time.time()
    log_path = out / "train_log.jsonl"
    log_path.write_text("")

    def log(record):
        record["seconds"] = round(time.time() - start, 1)
        line = json.dumps(record)
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log({"phase": "start", "args": vars(args)})
    train_vision(model, batches, args, log)
    train_decoder(model, batches, args, log, lambda: save_weights(model, out))
    log({"phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
