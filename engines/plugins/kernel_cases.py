"""Random and adversarial inputs for the pool kernels, their numpy expectations, and the comparison.

Plain numpy (runs and is tested on CPU). Expected outputs come from the plugin reference ops
(``engines/plugin_reference.py``). PoolSelect must give exactly the reference indices:

- tie cases use small integers for q and keys and a power-of-two scale, so every logit is exact
  in any summation order; tied candidates then have bitwise-equal probabilities on both sides,
  and distinct ones differ by at least e^(1/8) (far beyond any ulp of exp or of the head mean);
- random cases are redrawn (next seed) while the reference's k-th and (k+1)-th scores are closer
  than ``MIN_RELATIVE_GAP``: fp32 sums in another order may legitimately swap such near-ties.

Gather/scatter are copies: their outputs must be bitwise equal (so NaN payloads, -0 and one-ulp
changes all count).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.plugin_reference import pool_gather_ref, pool_scatter_ref, pool_scores_ref, pool_select_ref

MIN_RELATIVE_GAP = 1e-4
ANYRES_VISUAL = 2880  # LLaVA-NeXT anyres visual tokens
QWEN_VISUAL_BOUND = 3840  # Qwen2.5-VL-7B's max_visual_tokens (the dynamic plugins' largest P)
# N_v of images of several sizes: 1 token (k = 1 everywhere), a small and an odd grid, the bound
DYNAMIC_VISUAL = (1, 144, 1369, QWEN_VISUAL_BOUND)
# the release's ours_vs_pdrop schedule at avg128 on the 28-layer decoder (stages 2, 6, 13, 20)
DYNAMIC_KEEP_RATIOS = (0.2655, 0.2655, 0.1328, 0.0664)


@dataclass
class Case:
    name: str
    op: str  # "select" | "gather" | "scatter"
    inputs: dict
    expected: np.ndarray
    options: dict = field(default_factory=dict)  # harness-only knobs (misalign, in_place)


# ---------------------------------------------------------------------------------------------
# PoolSelect
# ---------------------------------------------------------------------------------------------

def _select_case(name, q, keys, v0, k, p, scale, pad_lengths=None) -> Case:
    inputs = dict(q=q, keys=keys, v0=v0, k=k, num_candidates=p, scale=scale, pad_lengths=pad_lengths)
    pad = 0 if pad_lengths is None else pad_lengths
    return Case(name, "select", inputs, pool_select_ref(q, keys, v0, k, p, scale, pad))


def boundary_gap(q, keys, v0, k, p, scale) -> float:
    """Smallest relative gap, over batch rows, between the k-th and (k+1)-th reference scores."""
    if k >= p:
        return np.inf
    scores = np.sort(pool_scores_ref(q, keys, v0, p, scale), axis=1)[:, ::-1]  # [B, P] descending
    kth, nxt = scores[:, k - 1], scores[:, k]
    return float(np.min((kth - nxt) / np.maximum(np.abs(kth), np.finfo(np.float32).tiny)))


def distinct_gap(q, keys, v0, p, scale) -> float:
    """Smallest relative gap between two different reference scores of one batch row (exact ties skipped)."""
    gaps = [np.inf]
    for row in pool_scores_ref(q, keys, v0, p, scale):
        values = np.unique(row)  # ascending, exact duplicates merged
        if len(values) > 1:
            gaps.append(float(np.min(np.diff(values) / values[1:])))
    return min(gaps)


def random_select(name, seed, b, h, kvh, n, hd, p, k, v0, dtype) -> Case:
    """Gaussian q/keys with a clear top-k boundary (redrawn with the next seed until it is)."""
    scale = hd**-0.5
    for attempt in range(100):
        rng = np.random.default_rng(seed + attempt)
        q = rng.standard_normal((b, h, hd)).astype(dtype)
        keys = rng.standard_normal((b, kvh, n, hd)).astype(dtype)
        if boundary_gap(q, keys, v0, k, p, scale) >= MIN_RELATIVE_GAP:
            return _select_case(name, q, keys, v0, k, p, scale)
    raise RuntimeError(f"{name}: no seed from {seed} gave a clear top-k boundary")


def tied_select(name, seed, b, h, kvh, n, hd, p, k, v0, dtype, levels: int = 3) -> Case:
    """Integer q/keys: many candidates share a score exactly; ties must go to the lower index."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-1, 2, (b, h, hd)).astype(dtype)
    rows = rng.integers(-2, 3, (b, kvh, levels, hd))  # few distinct key rows -> exact tie groups
    keys = np.take_along_axis(rows, rng.integers(0, levels, (b, kvh, n, 1)), axis=2).astype(dtype)
    # different head mixes could be equal in exact arithmetic yet not in fp32: keep such draws out
    if distinct_gap(q, keys, v0, p, 0.125) < MIN_RELATIVE_GAP:
        raise RuntimeError(f"{name}: seed {seed} gives near-equal distinct scores; pick another seed")
    return _select_case(name, q, keys, v0, k, p, 0.125)


def constant_select(name, b, h, n, hd, p, k, v0, dtype) -> Case:
    """q = 0: every probability is exactly 1/n, so the k lowest candidates win."""
    q = np.zeros((b, h, hd), dtype)
    keys = np.ones((b, h, n, hd), dtype)
    return _select_case(name, q, keys, v0, k, p, 1.0)


def underflow_select(name, seed, b, h, n, hd, p, k, v0, dtype, hot: int = 3) -> Case:
    """A few candidates take all the mass; the rest underflow to probability 0 (exact ties at 0)."""
    rng = np.random.default_rng(seed)
    q = np.ones((b, h, hd), dtype)
    keys = np.full((b, h, n, hd), -16, dtype)  # logit -16 * hd <= -128: exp underflows to exactly 0
    for i in range(b):
        keys[i, :, v0 + rng.choice(p, hot, replace=False)] = 0  # hot candidates: logit 0
    return _select_case(name, q, keys, v0, k, p, 1.0)


def select_cases() -> list[Case]:
    cases = []
    for dtype in (np.float32, np.float16):
        t = np.dtype(dtype).name
        cases += [
            random_select(f"select-random-gqa-{t}", 1, 3, 8, 2, 300, 64, 256, 64, 20, dtype),
            random_select(f"select-random-k1-{t}", 2, 2, 4, 4, 100, 32, 80, 1, 5, dtype),
            random_select(f"select-random-kP-{t}", 3, 2, 4, 2, 100, 32, 80, 80, 5, dtype),
            random_select(f"select-anyres-{t}", 4, 2, 4, 1, ANYRES_VISUAL + 60, 128, ANYRES_VISUAL, 720, 35,
                          dtype),
            tied_select(f"select-ties-{t}", 5, 3, 8, 2, 200, 16, 160, 50, 12, dtype),
            tied_select(f"select-ties-anyres-{t}", 6, 2, 4, 2, ANYRES_VISUAL + 8, 16, ANYRES_VISUAL, 1440, 4,
                        dtype),
            constant_select(f"select-all-equal-{t}", 2, 2, 64, 8, 50, 7, 10, dtype),
            underflow_select(f"select-zero-ties-{t}", 7, 2, 2, 90, 8, 64, 10, 20, dtype),
        ]
    return cases + [padded_select(f"select-left-padded-{np.dtype(t).name}", 8, t) for t in (np.float32, np.float16)]


def padded_select(name, seed, dtype) -> Case:
    """A left-padded mixed batch: per-sample span starts and padding; the padding keys are huge, so
    letting them into the softmax would flatten every candidate's probability and change the winners."""
    b, h, kvh, n, hd, p, k = 3, 4, 2, 120, 32, 64, 16
    starts, pad = np.array([4, 30, 17], np.int64), np.array([0, 25, 9], np.int64)
    for attempt in range(100):
        rng = np.random.default_rng(seed + attempt)
        q = rng.standard_normal((b, h, hd)).astype(dtype)
        keys = rng.standard_normal((b, kvh, n, hd)).astype(dtype)
        for i, count in enumerate(pad):
            keys[i, :, :count] = 8.0 * np.sign(q[i, :kvh, None, :])  # aligned with q: dominant logits
        scores = np.sort(pool_scores_ref(q, keys, starts, p, hd**-0.5, pad), axis=1)[:, ::-1]
        if np.min((scores[:, k - 1] - scores[:, k]) / scores[:, k - 1]) >= MIN_RELATIVE_GAP:
            return _select_case(name, q, keys, starts, k, p, hd**-0.5, pad)
    raise RuntimeError(f"{name}: no seed from {seed} gave a clear top-k boundary")


# ---------------------------------------------------------------------------------------------
# PoolGather / PoolScatter
# ---------------------------------------------------------------------------------------------

def random_selection(rng, b: int, p: int, k: int) -> np.ndarray:
    """[B, k] ascending distinct indices in [0, P), a different set per batch row."""
    return np.stack([np.sort(rng.choice(p, k, replace=False)) for _ in range(b)]).astype(np.int64)


def _bits(rng, shape, dtype) -> np.ndarray:
    """Random bit patterns of ``dtype`` (NaN payloads, -0 and denormals included)."""
    raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


# (name, numpy dtype, channels): bf16 travels as uint16 bits; widths hit every copy word 16..1 bytes
COPY_LAYOUTS = [
    ("fp32", np.float32, 64), ("fp16", np.float16, 4096), ("bf16", np.uint16, 36), ("int64", np.int64, 1),
    ("int32", np.int32, 1), ("fp16-c1", np.float16, 1), ("bytes-c3", np.uint8, 3),
]


def copy_cases() -> list[Case]:
    rng = np.random.default_rng(11)
    cases = []
    for name, dtype, c in COPY_LAYOUTS:
        for b, n, p, k, v0 in ((2, 40, 24, 6, 5), (1, 30, 30, 1, 0), (3, 50, 20, 20, 30)):
            tag = f"{name}-b{b}-k{k}-v{v0}"
            x = _bits(rng, (b, n, c), dtype)
            sel = random_selection(rng, b, p, k)
            gathered = pool_gather_ref(x, sel, v0, p)
            cases.append(Case(f"gather-{tag}", "gather", dict(x=x, selected=sel, v0=v0, num_candidates=p),
                              gathered))
            compact = _bits(rng, gathered.shape, dtype)
            expected = pool_scatter_ref(x, compact, sel, v0, p)
            inputs = dict(x=x, compact=compact, selected=sel, v0=v0, num_candidates=p)
            cases.append(Case(f"scatter-{tag}", "scatter", inputs, expected))
    x = _bits(rng, (2, ANYRES_VISUAL + 20, 4096), np.float16)  # anyres-length fp16 rows, 16-byte words
    sel = random_selection(rng, 2, ANYRES_VISUAL, 720)
    cases.append(Case("gather-anyres-fp16", "gather", dict(x=x, selected=sel, v0=10, num_candidates=ANYRES_VISUAL),
                      pool_gather_ref(x, sel, 10, ANYRES_VISUAL)))
    return cases + _per_sample_starts(rng) + _pointer_variants(rng)


def _per_sample_starts(rng) -> list[Case]:
    """A left-padded batch: each sample's span at its own start ([B] visual_start)."""
    x = _bits(rng, (3, 40, 8), np.float32)
    sel, starts = random_selection(rng, 3, 24, 6), np.array([0, 9, 16], np.int64)
    gathered = pool_gather_ref(x, sel, starts, 24)
    compact = _bits(rng, gathered.shape, np.float32)
    return [Case("gather-per-sample-starts", "gather", dict(x=x, selected=sel, v0=starts, num_candidates=24),
                 gathered),
            Case("scatter-per-sample-starts", "scatter",
                 dict(x=x, compact=compact, selected=sel, v0=starts, num_candidates=24),
                 pool_scatter_ref(x, compact, sel, starts, 24))]


def _pointer_variants(rng) -> list[Case]:
    """Misaligned pointers (narrower copy words on wide rows) and in-place scatter (out aliases x)."""
    x = _bits(rng, (2, 40, 64), np.float32)
    sel = random_selection(rng, 2, 24, 6)
    gathered = pool_gather_ref(x, sel, 5, 24)
    compact = _bits(rng, gathered.shape, np.float32)
    scattered = pool_scatter_ref(x, compact, sel, 5, 24)
    cases = []
    for misalign in (4, 2, 1):
        cases.append(Case(f"gather-misalign{misalign}", "gather", dict(x=x, selected=sel, v0=5, num_candidates=24),
                          gathered, dict(misalign=misalign)))
        cases.append(Case(f"scatter-misalign{misalign}", "scatter",
                          dict(x=x, compact=compact, selected=sel, v0=5, num_candidates=24), scattered,
                          dict(misalign=misalign)))
    cases.append(Case("scatter-in-place", "scatter", dict(x=x, compact=compact, selected=sel, v0=5, num_candidates=24),
                      scattered, dict(in_place=True)))
    return cases


# ---------------------------------------------------------------------------------------------
# Dynamic-N_v ops (PoolSelectDynamic / PoolGatherDynamic / PoolScatterDynamic)
# ---------------------------------------------------------------------------------------------

def dynamic_sizes(num_visual: int) -> list[tuple[int, int]]:
    """(P, k) per stage for an image of ``num_visual`` tokens, as the exported graph computes them from
    N_v and the keep ratios (graphs/capacity.py): routing scores all N_v, deletion the previous k."""
    from graphs.capacity import stage_coefficients
    from graphs.schedule import ROUTE, Schedule

    schedule = Schedule("reroute", ROUTE, 0.25, 28, QWEN_VISUAL_BOUND, (2, 6, 13, 20), DYNAMIC_KEEP_RATIOS)
    ks = stage_coefficients(schedule, QWEN_VISUAL_BOUND).capacities(num_visual)
    routed = [(num_visual, k) for k in ks]
    deleted = [(num_visual if s == 0 else ks[s - 1], k) for s, k in enumerate(ks)]
    return sorted(set(routed + deleted))


def dynamic_cases() -> list[Case]:
    """What the dynamic plugins hand the launchers: P and k from N_v at run time, up to the bound.

    The plugins read P and k off their extents' dimensions and call the same launchers as the static
    ones, so these cases are those launchers at the sizes one dynamic artifact meets across images.
    """
    rng = np.random.default_rng(21)
    cases = []
    for n_visual in DYNAMIC_VISUAL:
        for p, k in dynamic_sizes(n_visual):
            v0, text = 15, 25  # <|vision_start|> after a system prompt; a question after the image
            n = v0 + p + text
            tag = f"Nv{n_visual}-P{p}-k{k}"
            cases.append(random_select(f"dynamic-select-{tag}", 100 + len(cases), 1, 4, 2, n, 32, p, k, v0,
                                       np.float32))
            x = _bits(rng, (2, n, 40), np.float16)  # 80-byte rows: 16-byte copy words
            sel = random_selection(rng, 2, p, k)
            gathered = pool_gather_ref(x, sel, v0, p)
            cases.append(Case(f"dynamic-gather-{tag}", "gather", dict(x=x, selected=sel, v0=v0, num_candidates=p),
                              gathered))
            compact = _bits(rng, gathered.shape, np.float16)
            cases.append(Case(f"dynamic-scatter-{tag}", "scatter",
                              dict(x=x, compact=compact, selected=sel, v0=v0, num_candidates=p),
                              pool_scatter_ref(x, compact, sel, v0, p)))
    return cases


def all_cases() -> list[Case]:
    return select_cases() + copy_cases() + dynamic_cases()


# ---------------------------------------------------------------------------------------------
# Comparison and running
# ---------------------------------------------------------------------------------------------

def compare(case: Case, actual: np.ndarray) -> dict:
    """{"name", "op", "passed", "mismatches", "detail"}: exact equality, bitwise for copies."""
    expected = case.expected
    result = dict(name=case.name, op=case.op, passed=False, mismatches=0, detail="")
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        result["detail"] = f"shape/dtype {actual.shape} {actual.dtype} != expected {expected.shape} {expected.dtype}"
        return result
    a = actual.reshape(actual.shape[:2] + (-1,)).view(np.uint8) if case.op != "select" else actual
    e = expected.reshape(expected.shape[:2] + (-1,)).view(np.uint8) if case.op != "select" else expected
    diff = np.argwhere(a != e)
    result["mismatches"] = int(len(diff))
    result["passed"] = result["mismatches"] == 0
    if len(diff):
        first = tuple(int(i) for i in diff[0][:2])
        result["detail"] = f"first mismatch at [b, position]={list(first)}: {actual[first]!r} != {expected[first]!r}"
    return result


def run_case(harness, case: Case) -> dict:
    """Run one case through a KernelHarness; a CUDA failure is a failed case, not an exception."""
    inp = case.inputs
    try:
        if case.op == "select":
            actual = harness.select(inp["q"], inp["keys"], inp["v0"], inp["k"], inp["num_candidates"], inp["scale"],
                                    inp.get("pad_lengths"))
        elif case.op == "gather":
            actual = harness.gather(inp["x"], inp["selected"], inp["v0"], inp["num_candidates"], **case.options)
        else:
            actual = harness.scatter(inp["x"], inp["compact"], inp["selected"], inp["v0"], inp["num_candidates"],
                                     **case.options)
    except Exception as exc:  # noqa: BLE001 - reported per case
        return dict(name=case.name, op=case.op, passed=False, mismatches=-1, detail=f"{type(exc).__name__}: {exc}")
    return compare(case, actual)
