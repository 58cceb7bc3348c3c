"""papers/face/sharing.py: sharing-pattern costs (against hand counts and against counting the built network),
enumeration, choice."""
import numpy as np
import pandas as pd
import pytest
import torch

from visualsearch.flops import count_flops
from visualsearch.models.face import FaceNetConfig, FaceTrunk, MultiHeadFaceNet, make_branch
from visualsearch.papers.face.sharing import (choose_pattern, enumerate_patterns, part_costs, pareto_front,
                                              pattern_cost, pattern_of)

CFG = FaceNetConfig(widths=(4, 8, 16, 32), blocks=(1, 1, 1, 1), input_size=8)
N = {"age": 9, "gender": 2, "ethnicity": 7, "emotion": 5}


def test_stage_costs_match_hand_counted_multiply_adds():
    c = part_costs(CFG, N, input_size=8)
    # stage 1: stem 3->4 3x3 at 8x8, block 4->4 (two 3x3 convs) at 8x8
    assert c["stages"][0]["macs"] == 8 * 8 * 4 * 3 * 9 + 2 * 8 * 8 * 4 * 4 * 9
    # stage 2: 4->8 stride 2 to 4x4: conv1, conv2, 1x1 shortcut
    assert c["stages"][1]["macs"] == 4 * 4 * 8 * 4 * 9 + 4 * 4 * 8 * 8 * 9 + 4 * 4 * 8 * 4
    assert all(s["flops"] == 2 * s["macs"] for s in c["stages"])
    assert c["heads"]["age"]["macs"] == 32 * 9 and c["heads"]["age"]["params"] == 32 * 9 + 9


@pytest.mark.parametrize("pattern", [{"age": 4, "gender": 4, "ethnicity": 4, "emotion": 4},
                                     {"age": 0, "gender": 0, "ethnicity": 0, "emotion": 0},
                                     {"age": 1, "gender": 4, "ethnicity": 3, "emotion": 2}])
def test_pattern_cost_equals_counting_the_built_network(pattern):
    costs = part_costs(CFG, N, input_size=16)
    trunk = FaceTrunk(CFG)
    net = MultiHeadFaceNet(trunk, {a: make_branch(trunk, d, N[a]) for a, d in pattern.items()})
    counted = count_flops(net, torch.zeros(1, 3, 16, 16))
    expected = pattern_cost(pattern, costs)
    assert counted["flops"] == expected["flops"] and counted["macs"] == expected["macs"]
    assert counted["params"] == expected["params"]


def test_sharing_everything_is_cheapest_and_nothing_costs_four_networks():
    costs = part_costs(CFG, N, input_size=16)
    one = sum(s["flops"] for s in costs["stages"])
    heads = sum(h["flops"] for h in costs["heads"].values())
    assert pattern_cost({a: 4 for a in N}, costs)["flops"] == one + heads
    assert pattern_cost({a: 0 for a in N}, costs)["flops"] == 4 * one + heads


def _acc():
    return {"age": {0: .5, 1: .55, 2: .5, 3: .45, 4: .4}, "gender": {0: .9, 1: .9, 2: .9, 3: .9, 4: .89},
            "ethnicity": {0: .6, 1: .6, 2: .62, 3: .61, 4: .6}, "emotion": {0: .7, 1: .8, 2: .6, 3: .4, 4: .3}}


def test_enumerate_and_choose():
    costs = part_costs(CFG, N, input_size=16)
    df = enumerate_patterns(_acc(), costs)
    assert len(df) == 5 ** 4
    row = df[df["pattern"] == "age@1 gender@4 ethnicity@2 emotion@1"].iloc[0]
    assert row["mean_accuracy"] == pytest.approx((.55 + .89 + .62 + .8) / 4)
    best = choose_pattern(df, budget=float("inf"))
    chosen = pattern_of(best)  # gender is equally accurate at 0..3; at 2 or 3 it adds the least cost
    assert {a: chosen[a] for a in ("age", "ethnicity", "emotion")} == {"age": 1, "ethnicity": 2, "emotion": 1}
    assert chosen["gender"] in (2, 3)
    assert best["flops"] == df[df["mean_accuracy"] == best["mean_accuracy"]]["flops"].min()
    cheap = df["flops"].min()
    assert pattern_of(choose_pattern(df, budget=cheap)) == {a: 4 for a in N}
    tight = choose_pattern(df, budget=cheap * 1.3, convention="flops")
    assert tight["flops"] <= cheap * 1.3
    assert df[df["flops"] <= cheap * 1.3]["mean_accuracy"].max() == tight["mean_accuracy"]
    assert choose_pattern(df, budget=df["macs"].max(), convention="macs")["macs"] <= df["macs"].max()
    with pytest.raises(ValueError, match="no sharing pattern fits"):
        choose_pattern(df, budget=cheap - 1)


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"flops": rng.integers(0, 50, 200), "mean_accuracy": rng.random(200).round(2)})
    front = pareto_front(df)
    for i in df.index:
        dominated = ((df["flops"] <= df.at[i, "flops"]) & (df["mean_accuracy"] >= df.at[i, "mean_accuracy"])
                     & ((df["flops"] < df.at[i, "flops"]) | (df["mean_accuracy"] > df.at[i, "mean_accuracy"]))).any()
        assert front[i] == (not dominated) or (not dominated and df[(df.flops == df.at[i, "flops"]) & (df.mean_accuracy == df.at[i, "mean_accuracy"])].shape[0] > 1)


def test_the_budget_check_costs_the_most_accurate_pattern_on_the_paper_network():
    """The paper's budget is checked on the pattern picked without the budget filter (so the check can fail),
    costed on the paper preset's network at its own input size, not on the small network of the default."""
    from visualsearch.config import load_params
    from visualsearch.papers.face.sharing import budget_network, choose_without_budget, with_budget_costs
    df = enumerate_patterns(_acc(), part_costs(CFG, N, input_size=16))
    free = choose_without_budget(df)
    assert free["mean_accuracy"] == df["mean_accuracy"].max()
    # a budget that the most accurate pattern exceeds: the budgeted choice differs, the unbudgeted one does not
    assert pattern_of(choose_pattern(df, budget=df["flops"].min())) != pattern_of(free)
    cfg, preset = budget_network(load_params("face_attribute_sharing", "default"))
    paper = load_params("face_attribute_sharing", "paper")["model"]
    assert preset == "paper" and cfg.input_size == paper["input_size"] == 112 and list(cfg.widths) == paper["widths"]
    assert cfg.stem_stride == paper["stem_stride"]
    big = part_costs(cfg, N, cfg.input_size)
    both = with_budget_costs(df, big)
    row = both[both.pattern == free["pattern"]].iloc[0]
    assert row["budget_flops"] == pattern_cost(pattern_of(free), big)["flops"] > row["flops"]
    assert row["budget_macs"] * 2 == row["budget_flops"]
