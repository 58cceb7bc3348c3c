"""Fashion IQ / Fashion200k / Birds-to-Words style worlds from products: formats read back by the real
readers, captions that describe the real attribute differences, galleries with look-alikes."""
import json
from dataclasses import asdict

import pytest

from visualsearch.data.fashion_text import (ATTRIBUTES, FashionTextConfig, build_birds_to_words,
                                            build_fashion200k, build_fashion_iq, lightness)
from visualsearch.data.text_feedback import (FIQ_JOIN, read_birds_to_words, read_fashion200k, read_fashion_iq)

SMALL = FashionTextConfig(fiq_pairs=(8, 6, 3), f200k_products=(20, 20), f200k_queries=15, b2w_pairs=(6, 3, 3))

COLOUR_WORDS = ("darker", "lighter", "brighter")
PATTERN_WORDS = {"solid": ("plain", "no pattern", "solid", "without a print"), "stripes": ("stripe",),
                 "dots": ("dot",), "checks": ("check", "plaid"), "floral": ("flower", "floral"),
                 "gradient": ("gradient", "ombre", "faded", "fades")}


def mentioned(attr, old, new, text):
    if attr == "colour":
        return new in text or any(w in text for w in COLOUR_WORDS)
    if attr == "pattern":
        return any(w in text for w in PATTERN_WORDS[new])
    if attr == "sleeve":
        return {"sleeveless": "sleeve", "short": "short", "long": "long"}[new] in text
    if attr == "neckline":
        return {"round": "round", "v": " v", "square": "square", "collar": "collar"}[new] in text or \
            ("crew" in text and new == "round") or ("straight" in text and new == "square")
    return any(w in text for w in ("long", "short", "maxi", "mini", "knee", "crop", "floor", "normal", "regular"))


@pytest.mark.parametrize("layout", ["common", "authors"])
def test_fashion_iq_style_reads_back_and_captions_describe_the_differences(tmp_path, layout):
    cfg = FashionTextConfig(**{**asdict(SMALL), "layout": layout})
    build_fashion_iq(tmp_path, asdict(cfg))
    attrs = json.loads((tmp_path / "attributes.json").read_text())
    val = read_fashion_iq(tmp_path, "val")
    assert set(val) == {"dress", "shirt", "toptee"}
    for cat, split in val.items():
        assert len(split.queries) == 6 and split.skips.count == 0
        assert len(split.images) == 6 * (2 + cfg.fiq_distractors)  # reference, target, look-alike(s)
        for q in split.queries:
            ref, tgt = attrs[split.labels[q.source]], attrs[q.target_label]
            diff = [(a, ref[a], tgt[a]) for a in ATTRIBUTES if ref[a] != tgt[a]]
            assert 1 <= len(diff) <= cfg.max_changes and tgt["category"] == cat
            assert len(q.captions) == 2
            text = " ".join(q.captions)
            for a, old, new in diff:
                assert mentioned(a, old, new, text), (a, old, new, text)
            lookalikes = [l for l in split.labels if attrs[l] == tgt and l != q.target_label]
            assert len(lookalikes) >= cfg.fiq_distractors
            assert FIQ_JOIN in split.query_text(q)
    test = read_fashion_iq(tmp_path, "test")
    assert all(q.target is None for s in test.values() for q in s.queries)


def test_vague_colour_words_are_true(tmp_path):
    cfg = FashionTextConfig(**{**asdict(SMALL), "vague_prob": 1.0, "fiq_pairs": (30, 2, 2)})
    build_fashion_iq(tmp_path, asdict(cfg))
    attrs = json.loads((tmp_path / "attributes.json").read_text())
    checked = 0
    for split in read_fashion_iq(tmp_path, "train").values():
        for q in split.queries:
            ref, tgt = attrs[split.labels[q.source]], attrs[q.target_label]
            for cap in q.captions:
                if "darker" in cap:
                    assert lightness(tgt["colour"]) < lightness(ref["colour"]); checked += 1
                if "lighter" in cap:
                    assert lightness(tgt["colour"]) > lightness(ref["colour"]); checked += 1
    assert checked > 0


def test_fashion200k_style_queries_differ_by_one_word(tmp_path):
    build_fashion200k(tmp_path, asdict(SMALL))
    test = read_fashion200k(tmp_path, "test")
    assert len(test.images) == 20 * 3 and len(test.queries) == 15
    for q in test.queries:
        src, tgt = test.labels[q.source].split(), q.target_label.split()
        assert sum(a != b for a, b in zip(src, tgt)) == 1
        x, y = [(a, b) for a, b in zip(src, tgt) if a != b][0]
        assert q.captions == (f"replace {x} with {y}",)
    train = read_fashion200k(tmp_path, "train")
    assert len(train.queries) > 0
    assert len(set(test.labels)) < len(test.labels)  # captions are shared, as in Fashion200k


def test_birds_to_words_style_tsv(tmp_path):
    build_birds_to_words(tmp_path, asdict(SMALL))
    test = read_birds_to_words(tmp_path, "test")
    assert len(test.images) == 6 and len(test.queries) == 6  # two descriptions per evaluation pair
    assert all("animal1" in q.captions[0] or "animal2" in q.captions[0] for q in test.queries)
    train = read_birds_to_words(tmp_path, "train")
    assert len(train.queries) == 12  # each pair and its swap
