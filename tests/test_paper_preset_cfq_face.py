"""Rehearsals of the paper preset of the CFQ and face notebooks on data in the published layouts.

Each test writes a data root with the synthetic writers (the real releases' file names and formats, with one
truncated JPEG and one missing image), makes the local weights the preset loads in their real format (a tiny
CLIP saved with transformers' save_pretrained; the face trunk loads none: it is trained on the identity
folders), and runs the notebook through the real runner:

    python -m visualsearch.runner --preset paper --only <notebook> --data-root DIR --out TMP --set ...

shrunk by --set only (widths, input size, steps, batch sizes; never another code path). Then it checks that
the tables and figures were written and that the skipped images are counted in the provenance sidecars.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from paper_preset import provenance, run_paper_preset, truncate


pytestmark = [pytest.mark.paper_preset, pytest.mark.slow]





# ----------------------------------------------------------------------------------------------------- CFQ

def write_cfq_data_root(root: Path) -> dict:
    """fashioniq/ (the authors' img/{category}/{asin} layout), imaterialist/ (Kaggle's train.json /
    validation.json, label map, images_{split}/), cfq/ (judgments.tsv, equivalent_captions.json, images/, with
    the release's 3 missing catalog images), written by the synthetic writers; then one Fashion IQ image cut
    short, one CFQ image cut short and one iMaterialist image removed. Returns what was damaged."""
    from visualsearch.data.cfq import build_cfq, read_judgments
    from visualsearch.data.fashion_text import build_fashion_iq
    from visualsearch.data.imaterialist import build_imat

    build_fashion_iq(root / "fashioniq", {"seed": 2, "image_size": 32, "fiq_pairs": [12, 6, 0], "layout": "authors"})
    build_imat(root / "imaterialist", {"seed": 3, "train_images": 60, "val_images": 30, "image_size": 32})
    build_cfq(root / "cfq", {"seed": 4, "queries_per_subset": 5, "catalog_size": 6, "image_size": 32})
    fiq_split = json.loads((root / "fashioniq" / "image_splits" / "split.dress.train.json").read_text())
    fiq_bad = root / "fashioniq" / "img" / "dress" / fiq_split[-1]
    judgments = read_judgments(root / "cfq" / "judgments.tsv")
    present = [h for h in dict.fromkeys(judgments["catalog_hash"]) if (root / "cfq" / "images" / f"{h}.jpeg").is_file()]
    cfq_bad = root / "cfq" / "images" / f"{present[0]}.jpeg"
    imat_gone = sorted((root / "imaterialist" / "images_train").rglob("*.jpeg"))[5]
    truncate(fiq_bad)
    truncate(cfq_bad)
    imat_gone.unlink()
    return {"fiq": fiq_bad, "cfq": cfq_bad, "imat": imat_gone}


def test_cfq_paper_preset_on_the_published_layouts(tmp_path):
    from test_papers_cfq import _trained_looking_clip

    data = tmp_path / "data"
    damaged = write_cfq_data_root(data)
    _trained_looking_clip(tmp_path / "clip")  # config.json + model.safetensors + tokenizer files, 32 px
    _trained_looking_clip(tmp_path / "clip2", seed=8)  # the "other CLIP" whose text tower the mismatch control takes
    out = tmp_path / "out"
    wall = run_paper_preset("cfq_evaluation", data, out, [
        f"model.clip_path={tmp_path / 'clip'}", "model.image_size=32",   # the local CLIP's input size
        f"model.mismatch_clip_path={tmp_path / 'clip2'}",
        "train.imfq.steps=2", "train.imfq.batch_size=8", "train.fiq.steps=3", "train.fiq.batch_size=8",
        "eval.imat_max_queries=20", "checkpoint_every=2"])
    results, figures = out / "results" / "cfq_evaluation", out / "figures" / "cfq_evaluation"
    grid = pd.read_csv(results / "experiment_grid.csv")
    assert (grid["preset"] == "paper").all() and grid["data"].str.contains("(real)", regex=False).all()
    assert grid["method"].nunique() == 13  # every run of the grid: the from-scratch arms and the controls included
    for name in ("cfq_by_threshold", "data_limited", "claims"):
        assert (results / f"{name}.csv").is_file(), name
    for name in ("judgment_histogram", "figure1_examples", "training_curves", "data_limited"):
        assert (figures / f"{name}.png").is_file() and (figures / f"{name}.pdf").is_file(), name
    skipped = provenance(out, "cfq_evaluation", "experiment_grid")["skipped_inputs"]
    cfq = skipped["Challenging Fashion Queries (real)"]
    assert cfq["by_reason"] == {"missing image": 3, "corrupt image": 1}
    assert str(damaged["cfq"]) in cfq["examples"]["corrupt image"]
    assert skipped["Fashion IQ (real)"]["by_reason"].get("corrupt image") == 1
    assert skipped["iMaterialist Fashion 2018 (real)"]["by_reason"] == {"missing image": 1}
    assert provenance(out, "cfq_evaluation", "claims")["skipped_inputs"] == skipped  # in every sidecar
    assert not any((Path(os.environ["VISUALSEARCH_CACHE"]) / "runs").glob("cfq_*/*/checkpoint.pt"))
    print(f"cfq_evaluation paper preset rehearsal: {wall:.0f} s")


# ---------------------------------------------------------------------------------------------------- face

def write_face_data_root(root: Path) -> dict:
    """identities/<person>/<k>.jpg, fairface_label_{train,val}.csv (FairFace's columns) with train/ and val/,
    fer2013.csv (emotion,pixels,Usage), written by the synthetic writers; then one identity photo cut short and
    one FairFace training image removed. Returns what was damaged."""
    from visualsearch.data.faces import write_published_layout

    write_published_layout(root, {"seed": 0, "image_size": 32, "n_pretrain_identities": 12, "n_train_identities": 6,
                                  "n_val_identities": 6, "photos_per_identity": 6})
    bad = root / "identities" / "id00000" / "000.jpg"
    gone = root / "train" / "3.jpg"
    truncate(bad)
    gone.unlink()
    return {"corrupt": bad, "missing": gone}


def test_face_paper_preset_on_the_published_layouts(tmp_path):
    data = tmp_path / "data"
    damaged = write_face_data_root(data)
    out = tmp_path / "out"
    wall = run_paper_preset("face_attribute_sharing", data, out, [
        "model.widths=[8,16,16,32]", "model.input_size=32", "trunk.steps=20", "trunk.batch_size=32",
        "finetune.steps=5", "finetune.batch_size=16", "control.probe_width=8", "seeds=[0,1]", "checkpoint_every=3",
        "threads=1"])  # (tiny networks: one thread; two only wait on each other on busy cores)
    results, figures = out / "results" / "face_attribute_sharing", out / "figures" / "face_attribute_sharing"
    for name in ("identity_trunk", "accuracy_by_depth", "sharing_patterns", "chosen_vs_baselines", "claims"):
        assert (results / f"{name}.csv").is_file(), name
    for name in ("accuracy_vs_depth", "flops_vs_accuracy", "confusion_matrices", "predictions_grid"):
        assert (figures / f"{name}.png").is_file(), name
    identity = pd.read_csv(results / "identity_trunk.csv")
    rank1 = identity[identity.metric == "rank-1 identity retrieval, unseen people"].iloc[0]
    assert pd.isna(rank1["reproduced"]) and rank1["note"].startswith("not computable")  # in words, not NaN
    assert "not computable" in (results / "identity_trunk.md").read_text()
    depth = pd.read_csv(results / "accuracy_by_depth.csv")
    emotion = depth[(depth.metric == "emotion accuracy") & depth["variant"].notna()]
    assert len(emotion) and emotion.reproduced.between(0, 1).all()  # emotion scored on FER2013's test rows
    side = provenance(out, "face_attribute_sharing", "accuracy_by_depth")
    (description, skipped), = side["skipped_inputs"].items()
    assert "FER2013" in description and skipped["by_reason"] == {"corrupt image": 1, "missing image": 1}
    assert str(damaged["corrupt"]) in skipped["examples"]["corrupt image"]
    assert provenance(out, "face_attribute_sharing", "identity_trunk")["skipped_inputs"] == side["skipped_inputs"]
    print(f"face_attribute_sharing paper preset rehearsal: {wall:.0f} s")
