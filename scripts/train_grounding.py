"""Train the ``llava-grounding`` preset from scratch on the synthetic grounding task (issue 14), on CPU.

The model is the preset's LLaVA-1.5 structure (CLIP 336/14 -> 576 visual tokens, a 32-layer Llama decoder,
small widths; see exporter/presets.py), with its task-word tokenizer (exporter/word_tokenizer.py: one token
per word and per box coordinate). Training has three phases, all seeded and deterministic:

1. **vision** (the tower alone): the CLIP tower and projector learn, through throw-away linear heads on the
   projector's output, what each patch shows: the colour and shape of the object painting most of it and
   the four coordinates (as the 101 classes the decoder writes) of that object's box. A dense signal (576
   labels a picture) that asks for exactly what the decoder must say; the heads are not part of the model.
2. **shallow decoder** (the tower frozen; its features computed once per picture): the first
   ``--shallow-layers`` decoder layers alone, with the final norm and the LM head, learn the task on one
   multi-turn conversation per picture (the grounding of every object and its relation questions, the first
   turn exactly the prompt ``reroute eval`` sends); loss on answer tokens only. A step costs ~1/8 of a
   32-layer step, which is what makes the task learnable in the time budget on a 2-core CPU.
3. **growth to 32 layers, then the whole decoder**: shallow layer ``b`` moves to depth ``b * 32 / L`` and
   the layers between are copies of it whose output projections (``o_proj``, ``down_proj``) are zero, so
   each is exactly the identity on the residual stream and the 32-layer model computes what the shallow one
   did (progressive stacking, as in the growth literature). The copies keep their source layer's attention
   weights, so their attention maps, which the routing rules read at the decision layers, are the trained
   ones, not noise. Then all 32 layers train together for ``--steps`` steps.

Pictures come from ``scripts/make_grounding_data.py``'s train split (same seed), drawn in memory. The log
(``train_log.jsonl``) holds the training loss, and at every evaluation the teacher-forced answer-token
accuracy on validation conversations and the *generation* accuracy (greedy, scored as ``reroute eval``
scores) on the first items of the val split. Weights are written atomically at every 32-layer evaluation.

    python scripts/train_grounding.py --out assets/llava-grounding   # the shipped weights
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
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


def shuffled(seed: int, tag: int, count: int, step: int, batch: int) -> list[int]:
    """Picture indices of ``step``: passes over ``range(count)``, each in its own seeded order."""
    out = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, count)
        out.append(int(np.random.default_rng([seed, tag, epoch]).permutation(count)[offset]))
    return out


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
        index = shuffled(args.seed, 0, args.pictures, step, args.vision_batch)
        pixels, colour, kind, box = data.vision_batch(index)
        # the heads read the projected features RMS-normalised, as every decoder layer's input norm will:
        # a class told apart by the features' scale alone would be invisible to the decoder
        feats = torch.nn.functional.rms_norm(model.model.multi_modal_projector(tower_features(model, pixels)),
                                             (hidden,))  # [B, 576, hidden]
        inside = colour > 0
        box_logits = heads["box"](feats[inside]).unflatten(-1, (4, dialogue.BINS))  # [n, 4, 101]
        # shape on the objects' patches only: over all patches the background class drowned it (measured:
        # chance accuracy after 900 steps). Colour twice: over all patches (object or background) and on the
        # objects' patches alone; with the first only, object colours stayed poorly separated (a linear
        # probe: 84% colour, 98% shape) and the decoder matched and answered on shape alone.
        loss = (ce(heads["colour"](feats).flatten(0, 1), colour.flatten())
                + ce(heads["colour"](feats[inside]), colour[inside])
                + ce(heads["shape"](feats[inside]), kind[inside])
                + dialogue.coordinate_loss(box_logits.flatten(0, 1), box[inside].flatten()))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vision_steps, args.vision_lr, 20)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.vision_steps - 1:
            near = (box_logits.argmax(-1) - box[inside]).abs().le(1).float().mean().item()
            colour_acc = (heads["colour"](feats[inside]).argmax(-1) == colour[inside]).float().mean().item()
            shape_acc = (heads["shape"](feats[inside]).argmax(-1) == kind[inside]).float().mean().item()
            log({"phase": "vision", "step": step, "loss": round(loss.item(), 4), "box_within_1": round(near, 4),
                 "colour_acc": round(colour_acc, 4), "shape_acc": round(shape_acc, 4)})


@torch.no_grad()
def frozen_features(model, data: dialogue.Pictures, split: str, index, chunk: int = 32) -> torch.Tensor:
    """[len(index), 576, vision width] tower features of those pictures (the tower is frozen after phase 1,
    so they are computed once and the decoder's backward pass never enters the tower)."""
    index = list(index)
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


class FocusProbe:
    """The attention of one head of one decoder layer, from the positions that predict answer tokens.

    Training adds ``focus_loss``: minus the log of the attention mass that head puts on the patches of
    the object the answer is about. Trained on the answer loss alone, the decoder never learnt to look
    the object up (measured: 750 shallow steps, and last stop's 400 32-layer steps, left it on the
    answer prior with 0% grounding); supervising one head's attention gives the lookup a direct signal.
    """

    def __init__(self, attention, head: int):
        self.head, self.rows, self.cols, self.logp = head, None, None, None
        self.handle = attention.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs) -> None:
        if self.rows is None:
            return
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        hidden = args[0] if args else kwargs["hidden_states"]  # [B, T, width], after the layer's norm
        cos, sin = kwargs["position_embeddings"]
        b, t, _ = hidden.shape
        q = module.q_proj(hidden).view(b, t, -1, module.head_dim)[:, :, self.head]  # [B, T, head_dim]
        k = module.k_proj(hidden).view(b, t, -1, module.head_dim)[:, :, self.head]
        q, k = apply_rotary_pos_emb(q.unsqueeze(1), k.unsqueeze(1), cos, sin)  # [B, 1, T, head_dim] each
        scores = torch.einsum("nd,ntd->nt", q[self.rows, 0, self.cols], k[self.rows, 0]) * module.scaling  # [n, T]
        future = torch.arange(t)[None] > self.cols[:, None]
        self.logp = torch.log_softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def focus_loss(probe: FocusProbe, target: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of -log(attention mass on the target's patches); ``target`` [n, T] bool."""
    keep = target.any(-1)  # an object too thin to paint COVERAGE of any patch has no target
    mass = probe.logp[keep].masked_fill(~target[keep], float("-inf")).logsumexp(-1)
    return -mass.mean()


def focus_targets(data: dialogue.Pictures, split: str, index, ids, focus, rows, image_token_id: int):
    """[n, T] bool: for each answer position (``rows``, in the order of ``where``), the patches of its
    turn's object, placed at the image tokens' positions of its row."""
    visual = ids == image_token_id  # [B, T]
    patches = torch.from_numpy(np.stack([data.patches(split, index[r])[f] if f >= 0 else np.zeros(576, bool)
                                         for r, f in zip(rows.tolist(), focus.tolist())]))  # [n, 576]
    target = torch.zeros(visual[rows].shape, dtype=torch.bool)
    target[visual[rows]] = patches.flatten()
    return target


def answer_loss(model, batch, image_token_id: int, probe: FocusProbe | None = None, data=None, split="train",
                index=None):
    """(answer cross-entropy, answer-token accuracy, focus loss or None) of one batch of conversations."""
    ids, labels, focus, feats = batch
    where = labels[:, 1:] != IGNORE  # position t predicts token t+1
    rows, cols = where.nonzero(as_tuple=True)
    if probe is not None:
        probe.rows, probe.cols = rows, cols
    try:
        logits = decoder_logits(model, ids[:, :-1], feats, image_token_id, where)
    finally:
        if probe is not None:
            probe.rows = probe.cols = None
    target = labels[:, 1:][where]
    loss = torch.nn.functional.cross_entropy(logits, target)
    focused = None
    if probe is not None:
        targets = focus_targets(data, split, index, ids[:, :-1], focus[:, 1:][where], rows, image_token_id)
        focused = focus_loss(probe, targets)
    return loss, (logits.argmax(-1) == target).float().mean(), focused


@contextmanager
def shallow(model, layers: int):
    """The decoder cut to its first ``layers`` layers (what phase 2 trains), restored on exit."""
    lm = model.model.language_model
    full, depth = lm.layers, lm.config.num_hidden_layers
    lm.layers, lm.config.num_hidden_layers = torch.nn.ModuleList(full[:layers]), layers
    try:
        yield
    finally:
        lm.layers, lm.config.num_hidden_layers = full, depth


def grow(model, trained: int) -> None:
    """Phase 3's start: trained layer ``b`` to depth ``b * depth / trained``, identity copies of it between.

    A Llama layer adds ``o_proj(attention)`` and ``down_proj(mlp)`` to the residual stream; with both zero
    it passes the stream through unchanged, so the grown decoder computes exactly what the shallow one did.
    """
    lm = model.model.language_model
    depth = lm.config.num_hidden_layers
    if depth % trained:
        raise SystemExit(f"--shallow-layers {trained} must divide the decoder's {depth} layers")
    block = depth // trained
    source = [lm.layers[b] for b in range(trained)]
    layers = []
    for position in range(depth):
        layer = source[position // block]
        if position % block:  # a new module, not a deepcopy: that would copy the focus probe's hook too
            copied = type(layer)(lm.config, position)
            copied.load_state_dict(layer.state_dict())
            layer = copied
            with torch.no_grad():
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        layer.self_attn.layer_idx = position  # the KV cache's slot
        layers.append(layer)
    lm.layers = torch.nn.ModuleList(layers)


def train_decoder(model, data: dialogue.Pictures, feats: torch.Tensor, val_feats: torch.Tensor, phase: str,
                  steps: int, lr: float, probe: FocusProbe, args, log, save=None) -> None:
    image_token_id = model.config.image_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    tag = 1 if phase == "shallow" else 2
    for step in range(steps):
        index = shuffled(args.seed, tag, args.pictures, step, args.batch)
        epoch = (step * args.batch) // args.pictures
        ids, labels, focus = data.conversations("train", index, epoch=tag * 1000 + epoch)
        answer, _, focused = answer_loss(model, (ids, labels, focus, feats[index]), image_token_id, probe, data,
                                         "train", index)
        loss = answer + args.focus_weight * focused
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, args.warmup)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        record = {"phase": phase, "step": step, "loss": round(answer.item(), 4), "focus": round(focused.item(), 4)}
        if (step + 1) % args.eval_every == 0 or step == steps - 1:
            record.update(evaluate(model, data, val_feats, image_token_id, args.val_pictures, args.val_items))
            if save is not None:
                save()
        log(record)


@torch.no_grad()
def evaluate(model, data: dialogue.Pictures, val_feats: torch.Tensor, image_token_id: int, val_pictures: int,
             items: int) -> dict:
    """Teacher-forced answer accuracy on val conversations; greedy generation accuracy on val items."""
    model.eval()
    ids, labels, focus = data.conversations("val", range(val_pictures))
    loss, acc, _ = answer_loss(model, (ids, labels, focus, val_feats[:val_pictures]), image_token_id)
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
    p.add_argument("--threads", type=int, default=2,
                   help="2 on an otherwise idle 2-core machine; 1 when it is shared (a second thread then waits "
                        "at every op's barrier for a time slice). The weights depend on it")
    p.add_argument("--pictures", type=int, default=6000, help="training pictures, rendered once")
    p.add_argument("--vision-steps", type=int, default=3000)
    p.add_argument("--vision-batch", type=int, default=8)
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--shallow-layers", type=int, default=4, help="decoder layers phase 2 trains (divides 32)")
    p.add_argument("--shallow-steps", type=int, default=6500)
    p.add_argument("--shallow-lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=300, help="32-layer decoder steps after the growth")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the 32-layer steps")
    p.add_argument("--batch", type=int, default=4, help="pictures (one conversation each) a decoder step")
    p.add_argument("--questions", type=int, default=6, help="relation questions per conversation, at most")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--focus-layer", type=int, default=1,
                   help="shallow decoder layer whose attention the focus loss supervises (grown to depth "
                        "focus_layer * 32 / shallow_layers)")
    p.add_argument("--focus-head", type=int, default=0)
    p.add_argument("--focus-weight", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--val-pictures", type=int, default=8, help="conversations for the teacher-forced accuracy")
    p.add_argument("--val-items", type=int, default=64, help="val items (half each kind) for generation accuracy")
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
        record["load"] = round(os.getloadavg()[0], 2)
        line = json.dumps(record)
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log({"phase": "start", "args": vars(args)})
    train_vision(model, data, args, log)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    feats = frozen_features(model, data, "train", range(args.pictures))
    val_feats = frozen_features(model, data, "val", range(max(args.val_pictures, (args.val_items + 1) // 2)))
    log({"phase": "features", "pictures": args.pictures})
    probe = FocusProbe(model.model.language_model.layers[args.focus_layer].self_attn, args.focus_head)
    with shallow(model, args.shallow_layers):
        train_decoder(model, data, feats, val_feats, "shallow", args.shallow_steps, args.shallow_lr, probe, args,
                      log)
    grow(model, args.shallow_layers)
    save = lambda: dialogue.save_weights(model, out, PRESET)  # noqa: E731
    log({"phase": "grown", **evaluate(model, data, val_feats, model.config.image_token_id, args.val_pictures,
                                      args.val_items)})
    save()
    train_decoder(model, data, feats, val_feats, "decoder", args.steps, args.lr, probe, args, log, save)
    log({"phase": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
