"""Schedule solver against SPEC section 5, FLOPs against section 6, and the family registry."""

from __future__ import annotations

import pytest

from exporter.inspect_model import inspect_report
from exporter.models import PRESETS
from exporter.registry import FAMILIES, family_of
from graphs.schedule import ScheduleError, solve_schedule

# SPEC section 5's table: ratio -> (fastv r, pdrop l, reroute-fastv r, reroute a)
SPEC_TABLE = {
    1 / 3: (0.2644, 0.5965, 0.2644, 0.4502),
    2 / 9: (0.1418, 0.4570, 0.1418, 0.2655),
    1 / 9: (0.01916, 0.2162, 0.01916, 0.0808),
}


@pytest.mark.parametrize("ratio", list(SPEC_TABLE))
def test_spec_table(ratio):
    fastv, pdrop, rfastv, reroute = SPEC_TABLE[ratio]
    s = solve_schedule("fastv", ratio, 32, 576)
    assert s.layers == (3,) and round(s.keep_ratios[0], 4) == round(fastv, 4)
    s = solve_schedule("pdrop", ratio, 32, 576)
    assert s.layers == (2, 7, 15, 23)
    assert round(s.value, 4) == round(pdrop, 4)
    assert list(s.keep_ratios) == pytest.approx([s.value**i for i in range(1, 5)], abs=1e-12)
    s = solve_schedule("reroute-fastv", ratio, 32, 576)
    assert s.layers == (3, 7, 15, 23) and all(round(r, 4) == round(rfastv, 4) for r in s.keep_ratios)
    s = solve_schedule("reroute", ratio, 32, 576)
    a = s.value
    assert round(a, 4) == round(reroute, 4)
    assert list(s.keep_ratios) == pytest.approx([a, a, a / 2, a / 4], abs=1e-12)


@pytest.mark.parametrize("method", ["fastv", "pdrop", "reroute-fastv", "reroute"])
@pytest.mark.parametrize("ratio", [1 / 3, 2 / 9, 1 / 9, 0.25])
def test_budget_rule_holds(method, ratio):
    s = solve_schedule(method, ratio, 32, 576)
    bounds = list(s.layers) + [32]
    avg = (s.layers[0] + sum((bounds[i + 1] - bounds[i]) * r for i, r in enumerate(s.keep_ratios))) / 32
    assert avg == pytest.approx(ratio, abs=1e-9)
    assert s.k == tuple(int(576 * r + 1e-9) for r in s.keep_ratios)


def test_ratio_one_is_identity_for_every_method():
    for method in ["fastv", "pdrop", "reroute-fastv", "reroute"]:
        assert set(solve_schedule(method, 1.0, 32, 576).k) == {576}


def test_other_depths_map_layers():
    assert solve_schedule("reroute-fastv", 1 / 3, 28, 576).layers == (3, 6, 13, 20)
    assert solve_schedule("reroute", 1 / 3, 28, 576).layers == (2, 6, 13, 20)


@pytest.mark.parametrize("method,ratio,message", [
    ("reroute", 0.0, "(0, 1]"), ("reroute", 1.5, "(0, 1]"), ("fastv", 0.05, "infeasible"),
    ("pdrop", 0.07, "less than one token"), ("bogus", 0.25, "unknown method"),
])
def test_refuses(method, ratio, message):
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        solve_schedule(method, ratio, 32, 576)


def test_explicit_schedule_reproduces_published_config():
    s = solve_schedule("pdrop", 0.0, 32, 576, layers=[2, 7, 15, 23], keep_ratios=[0.2789, 0.0937, 0.0315, 0.0106])
    assert s.k == (160, 53, 18, 6) and s.explicit
    assert s.ratio * 576 == pytest.approx(80.8, abs=0.1)  # the release says it averages 80.8 tokens
    with pytest.raises(ScheduleError, match="must not increase"):
        solve_schedule("pdrop", 0.0, 32, 576, layers=[2, 7], keep_ratios=[0.2, 0.5])


def test_inspect_llava_full_tflops_and_keep_ratios():
    for method in ["fastv", "pdrop", "reroute-fastv", "reroute"]:
        r = inspect_report("llava", method, 1 / 3)
        assert r["tflops"]["full"] == pytest.approx(3.817, abs=0.005)
        assert r["schedule"]["keep_ratios"] == [round(x, 6) for x in solve_schedule(method, 1 / 3, 32, 576).keep_ratios]
    r = inspect_report("llava", "reroute", 1 / 3)
    assert r["tflops"]["routed"] == pytest.approx(1.253, abs=0.005)
    assert r["kv_bytes"]["full"] == 2 * 32 * 128 * 576 * 2 * 32


def test_pdrop_lambda_half_matches_published_flops():
    # PDrop's paper: 4 stages of 8 layers, lambda 0.5 -> 576, 288, 144, 72 tokens: 1.78 T
    s = solve_schedule("pdrop", 0.0, 32, 576, layers=[8, 16, 24], keep_ratios=[0.5, 0.25, 0.125])
    from exporter.models import load_config
    from exporter.registry import decoder_config
    from graphs.flops import flops

    assert flops(decoder_config(load_config("llava")), s).routed / 1e12 == pytest.approx(1.78, abs=0.01)


def test_every_family_has_a_tiny_preset():
    from exporter.models import load_config

    for name, family in FAMILIES.items():
        assert family.tiny_preset in PRESETS and family.tiny_preset in family.presets, \
            f"family {name} has no tiny test model"
        assert family_of(load_config(family.tiny_preset)) is family
        assert "float32" in family.tolerances and "float16" in family.tolerances
        assert family.tolerances["float32"]["routing_overlap"] == 1.0 and family.tolerances["float32"]["token_match"] == 1.0
