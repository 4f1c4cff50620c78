"""Train the ``llava-grounding`` preset from scratch on the synthetic grounding task (issue 14), on CPU.

The model is the preset's LLaVA-1.5 structure (CLIP 336/14 -> 576 visual tokens, a 32-layer Llama decoder,
small widths; see exporter/presets.py), with its task-word tokenizer (exporter/word_tokenizer.py: one token
per word and per box coordinate). Training has two phases, both seeded and deterministic:

1. **vision** (cheap: the tower alone): the CLIP tower and projector learn, through throw-away linear heads
   on the projector's output, what lies under each patch: colour, shape, and the four coordinates (as the
   101 classes the decoder writes) of the box of the object that holds the patch centre. A dense signal
   (576 labels a picture) that asks for exactly what the decoder must say; the heads are not part of the model.
2. **decoder** (the tower frozen, so its features are computed once per picture and cached): one
   multi-turn conversation per picture holding the grounding of every object and its relation questions
   (LLaVA-1.5 trains on multi-turn conversations too), so the 576-token prefix, which dominates the cost
   of the 32 layers, is paid once for ~10 answers; loss on answer tokens only. The first turn is exactly
   the prompt ``reroute eval`` sends.

Pictures come from ``scripts/make_grounding_data.py``'s train split (same seed), drawn in memory. The log
(``train_log.jsonl``) holds the training loss, and at every evaluation the teacher-forced answer-token
accuracy on validation conversations and the *generation* accuracy (greedy, scored as ``reroute eval``
scores) on the first items of the val split. Weights are written atomically at every evaluation.

    python scripts/train_grounding.py --out assets/llava-grounding   # the defaults wrote the shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import grounding_dialogue as dialogue  # noqa: E402
import make_grounding_data as grounding  # noqa: E402

from exporter.presets import preset_config, preset_processor  # noqa: E402

PRESET = "llava-grounding"
IGNORE = dialogue.IGNORE


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine down to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def tower_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 576, vision width]: the tower's layer -2 patch states (CLS dropped), what LLaVA-1.5 projects."""
    states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    return states[model.config.vision_feature_layer][:, 1:]


def train_vision(model, data: dialogue.Pictures, args, log) -> None:
    hidden = model.config.text_config.hidden_size
    heads = torch.nn.ModuleDict({"colour": torch.nn.Linear(hidden, len(grounding.COLOURS) + 1),
                                 "shape": torch.nn.Linear(hidden, len(grounding.SHAPES) + 1),
                                 "box": torch.nn.Linear(hidden, 4 * dialogue.BINS)})
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.vision_lr, weight_decay=0.0)
    ce = torch.nn.functional.cross_entropy
    for step in range(args.vision_steps):
        first = step * args.vision_batch
        pixels, colour, kind, box = data.vision_batch(range(first, first + args.vision_batch))
        feats = model.model.multi_modal_projector(tower_features(model, pixels))  # [B, 576, hidden]
        inside = colour > 0
        box_logits = heads["box"](feats[inside]).unflatten(-1, (4, dialogue.BINS))  # [n, 4, 101]
        # shape on the objects' patches only: over all patches the background class drowned it (measured:
        # chance accuracy after 900 steps)
        loss = (ce(heads["colour"](feats).flatten(0, 1), colour.flatten())
                + ce(heads["shape"](feats[inside]), kind[inside])
                + dialogue.coordinate_loss(box_logits.flatten(0, 1), box[inside].flatten()))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vision_steps, args.vision_lr, 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.vision_steps - 1:
            near = (box_logits.argmax(-1) - box[inside]).abs().le(1).float().mean().item()
            colour_acc = (heads["colour"](feats[inside]).argmax(-1) == colour[inside]).float().mean().item()
            shape_acc = (heads["shape"](feats[inside]).argmax(-1) == kind[inside]).float().mean().item()
            log({"phase": "vision", "step": step, "loss": round(loss.item(), 4), "box_within_1": round(near, 4),
                 "colour_acc": round(colour_acc, 4), "shape_acc": round(shape_acc, 4)})


@torch.no_grad()
def frozen_features(model, data: dialogue.Pictures, split: str, index: range, chunk: int = 16) -> torch.Tensor:
    """[len(index), 576, vision width] tower features of those pictures (the tower is frozen in phase 2,
    so the decoder's backward pass never enters it)."""
    parts = [tower_features(model, data.pixels(split, index[i:i + chunk])) for i in range(0, len(index), chunk)]
    return torch.cat(parts)


def decoder_logits(model, ids: torch.Tensor, feats: torch.Tensor, image_token_id: int, where: torch.Tensor):
    """Logits at positions ``where`` of right-padded ``ids`` whose image tokens take the projected ``feats``.

    No attention mask: padding sits after every real token, so under the causal mask no real position
    sees it (sdpa then takes its fast causal path); padded positions are never scored.
    """
    embeds = model.model.language_model.embed_tokens(ids)  # [B, T, hidden]
    visual = model.model.multi_modal_projector(feats)  # [B, 576, hidden]
    embeds = embeds.masked_scatter((ids == image_token_id).unsqueeze(-1), visual.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    return model.lm_head(hidden[where])


def answer_loss(model, batch, image_token_id: int):
    ids, labels, feats = batch
    where = labels[:, 1:] != IGNORE  # position t predicts token t+1
    logits = decoder_logits(model, ids[:, :-1], feats, image_token_id, where)
    target = labels[:, 1:][where]
    return torch.nn.functional.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


def train_decoder(model, data: dialogue.Pictures, args, log, save) -> None:
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    image_token_id = model.config.image_token_id
    val_feats = frozen_features(model, data, "val", range(max(args.val_pictures, (args.val_items + 1) // 2)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    last = min(args.steps, args.stop_after or args.steps) - 1
    for step in range(last + 1):
        index = range(step * args.batch, (step + 1) * args.batch)
        ids, labels = data.conversations("train", index)
        loss, _ = answer_loss(model, (ids, labels, frozen_features(model, data, "train", index)), image_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        record = {"phase": "decoder", "step": step, "loss": round(loss.item(), 4)}
        if (step + 1) % args.eval_every == 0 or step == last:
            record.update(evaluate(model, data, val_feats, image_token_id, args.val_pictures, args.val_items))
            save()
        log(record)


@torch.no_grad()
def evaluate(model, data: dialogue.Pictures, val_feats: torch.Tensor, image_token_id: int, val_pictures: int,
             items: int) -> dict:
    """Teacher-forced answer accuracy on val conversations; greedy generation accuracy on val items."""
    model.eval()
    ids, labels = data.conversations("val", range(val_pictures))
    loss, acc = answer_loss(model, (ids, labels, val_feats[:val_pictures]), image_token_id)
    scores = dialogue.generation_accuracy(
        lambda prompt, feat: greedy(model, prompt, feat, image_token_id, data.tokenizer.eos_token_id),
        data, val_feats, items)
    model.train()
    return {"val_loss": round(loss.item(), 4), "val_token_acc": round(acc.item(), 4), **scores}


def greedy(model, prompt: list[int], feat: torch.Tensor, image_token_id: int, eos: int, steps: int = 14):
    """Greedy answer tokens for one prompt, with the decoder's KV cache."""
    lm = model.model.language_model
    ids = torch.tensor([prompt])
    embeds = lm.embed_tokens(ids).masked_scatter((ids == image_token_id).unsqueeze(-1),
                                                 model.model.multi_modal_projector(feat[None]))
    out = lm(inputs_embeds=embeds, use_cache=True)
    answer: list[int] = []
    for _ in range(steps):
        nxt = int(model.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
        if nxt == eos:
            break
        answer.append(nxt)
        out = lm(input_ids=torch.tensor([[nxt]]), cache=out.cache, use_cache=True)
    return answer


def build_untrained(seed: int):
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = preset_config(PRESET)
    config.text_config._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(config)
    dialogue.scaled_init(model, seed)
    return model.train()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for model.safetensors and train_log.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="1: on a shared CPU a second thread waits at every op's barrier for a time slice")
    p.add_argument("--vision-steps", type=int, default=800)
    p.add_argument("--vision-batch", type=int, default=8)
    p.add_argument("--vision-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=560, help="decoder steps (the schedule's length)")
    p.add_argument("--stop-after", type=int,
                   help="stop after this many decoder steps, the learning-rate schedule still spanning --steps "
                        "(the weights equal those a full run saved at that step)")
    p.add_argument("--batch", type=int, default=4, help="pictures (one conversation each) a decoder step")
    p.add_argument("--questions", type=int, default=6, help="relation questions per conversation, at most")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=80)
    p.add_argument("--val-pictures", type=int, default=8, help="conversations for the teacher-forced accuracy")
    p.add_argument("--val-items", type=int, default=32, help="val items (half each kind) for generation accuracy")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_untrained(args.seed)
    processor = preset_processor(PRESET)
    data = dialogue.Pictures(processor, model.config.image_token_id, args.seed, args.questions)
    start = time.time()
    log_path = out / "train_log.jsonl"
    log_path.write_text("")

    def log(record):
        record["seconds"] = round(time.time() - start, 1)
        record["load"] = round(__import__("os").getloadavg()[0], 2)
        line = json.dumps(record)
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log({"phase": "start", "args": vars(args)})
    train_vision(model, data, args, log)
    train_decoder(model, data, args, log, lambda: dialogue.save_weights(model, out, PRESET))
    log({"phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
