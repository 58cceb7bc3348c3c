"""The claims protocol: declared claims, the one paired-bootstrap test (against a naive loop), and how a
decision reaches claims.csv and index.md."""
import pandas as pd
import pytest
import torch

from visualsearch.claims import Claim, decide, declared_claims, paired_bootstrap
from visualsearch.report import Reporter, write_index

CLAIM = Claim(id="a_beats_b", text="A beats B", source="paper", better="A", worse="B", metric="hit@1")


def naive_bootstrap(d, clusters, n_boot, seed):
    """The cluster bootstrap as a loop over resamples and clusters (same random draws as paired_bootstrap)."""
    ids = sorted(set(clusters))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(ids), (n_boot, len(ids)), generator=g)
    means = []
    for row in pick.tolist():
        total = count = 0.0
        for c in row:
            members = [x for x, k in zip(d, clusters) if k == ids[c]]
            total += sum(members)
            count += len(members)
        means.append(total / count)
    means = torch.tensor(means, dtype=torch.float64)
    return torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()


def test_paired_bootstrap_matches_a_loop():
    a = [1, 0, 1, 1, 0, 1, 1, 0]
    b = [0, 0, 1, 0, 0, 1, 0, 1]
    clusters = [0, 0, 1, 1, 2, 3, 3, 4]
    diff, lo, hi = paired_bootstrap(a, b, clusters, n_boot=300, seed=4)
    assert diff == pytest.approx(sum(x - y for x, y in zip(a, b)) / len(a))
    assert [lo, hi] == pytest.approx(naive_bootstrap([x - y for x, y in zip(a, b)], clusters, 300, 4))


def test_decide_pools_seeds_and_can_fail():
    torch.manual_seed(0)
    items = 400
    worse = (torch.rand(2, items) < 0.5).float()
    better = torch.maximum(worse, (torch.rand(2, items) < 0.3).float())   # A adds hits to B's on every seed
    d = decide(CLAIM, {"A": better, "B": worse})
    assert d.passed and d.seeds == 2 and d.low > 0 and "2+ seed(s) pooled" in d.criterion
    assert d.difference == pytest.approx(float((better - worse).mean()))
    assert not decide(CLAIM, {"A": worse, "B": worse.flip(0)}).passed   # same distribution: no win
    strict = Claim(**{**CLAIM.__dict__, "threshold": 0.5})
    assert not decide(strict, {"A": better, "B": worse}).passed         # the threshold counts
    with pytest.raises(ValueError, match="must be paired"):
        decide(CLAIM, {"A": better, "B": worse[:, :10]})
    uneven = decide(CLAIM, {"A": better, "B": worse[:1]})     # seeds may differ: each method's mean is compared
    assert uneven.seeds == 1 and uneven.difference == pytest.approx(float((better.mean(0) - worse[0]).mean()))
    with pytest.raises(ValueError, match="no scores for"):
        decide(CLAIM, {"A": better})


def test_a_claim_against_several_methods_must_beat_each_and_competitive_reads_within():
    torch.manual_seed(1)
    b = (torch.rand(300) < 0.4).float()
    a = torch.maximum(b, (torch.rand(300) < 0.3).float())
    c = torch.ones(300)
    several = Claim(id="s", text="A beats B and C", source="paper", better="A", worse=["B", "C"], metric="hit@1")
    d = decide(several, {"A": a, "B": b, "C": c})
    assert not d.passed and "vs B" in d.detail and "vs C" in d.detail and d.worse_score == 1.0  # C is the closest
    assert decide(Claim(**{**several.__dict__, "worse": ("B",)}), {"A": a, "B": b}).passed
    competitive = Claim(id="c", text="A is competitive with B", source="paper", better="A", worse="B",
                        metric="hit@1", threshold=-0.05)
    assert decide(competitive, {"A": b, "B": b}).passed and "within 0.05 of" in competitive.comparison
    assert not decide(competitive, {"A": b, "B": c}).passed


def test_declared_claims_come_from_the_config_and_are_validated():
    p = {"claims": {"x": {"text": "A beats B", "source": "paper", "better": "A", "worse": "B", "metric": "R@1"}}}
    assert declared_claims(p)["x"].worse == ("B",) and declared_claims({}) == {}
    with pytest.raises(ValueError, match="source must be one of"):
        Claim(id="y", text="t", source="later", better="A", worse="B", metric="m")
    with pytest.raises(ValueError, match="must name other methods"):
        Claim(id="y", text="t", source="paper", better="A", worse=["A"], metric="m")


def test_decided_claims_reach_claims_csv_and_the_index_in_their_lists(tmp_path):
    rep = Reporter("toy_nb", {"preset": "default", "out_dir": str(tmp_path), "device": "cpu", "seed": 0})
    one, zero = torch.ones(1, 50), torch.zeros(1, 50)
    rep.decide(CLAIM, decide(CLAIM, {"A": one, "B": zero}))
    ext = Claim(id="e", text="our extension holds", source="extension", better="A", worse="B", metric="m",
                proxy="the paper's dataset is private")
    rep.decide(ext, decide(ext, {"A": zero, "B": one}))
    found = Claim(id="f", text="A beats B", source="exploratory", better="A", worse="B", metric="m")
    rep.decide(found, decide(found, {"A": one, "B": zero}))   # the same words as the paper's: its own row
    csv = pd.read_csv(tmp_path / "results" / "toy_nb" / "claims.csv")
    assert {"id", "comparison", "source", "criterion", "seeds"} <= set(csv.columns)
    assert list(csv["source"]) == ["paper", "extension", "exploratory"] and list(csv["seeds"]) == [1, 1, 1]
    index = write_index(tmp_path).read_text()
    paper_at = index.index("The paper's claims:")
    assert paper_at < index.index("Extensions") < index.index("Exploratory findings")
    paper_list = index[paper_at:index.index("Extensions")]
    assert "✅ A beats B [A > B on hit@1]" in paper_list and "•" not in paper_list
    assert "• A beats B" in index and "❌ our extension holds [A > B on m] (checked by a proxy" in index
