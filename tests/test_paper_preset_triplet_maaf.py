"""Rehearsals of the triplet and MAAF notebooks' paper presets on real-layout data.

Each test writes a data root in the datasets' published layouts with the synthetic writers (with one
half-written JPEG and one missing image among them), local weight files in the real formats (a torchvision
ResNet state dict), and runs the notebook through the real runner with `--preset paper --data-root`, shrunk by
`--set` only (widths, input size, steps, sizes; never another code path). It checks that every table and figure
is written and that the skipped inputs are counted in the provenance.
"""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from paper_preset import provenance, run_paper_preset, truncate
import torch
import torchvision




def resnet_state_dict(arch: str, path: Path) -> None:
    """A torchvision ResNet state dict (conv1.*, bn1.*, layer1-4.*, fc.*), as the ImageNet files are."""
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)




# ------------------------------------------------------------------------------------------------ triplet

@pytest.mark.paper_preset
@pytest.mark.slow
def test_triplet_paper_preset_on_inshop_and_sop_layouts(tmp_path):
    from visualsearch.data.products import ProductsWorldConfig, build_products

    data = tmp_path / "data"
    cfg = ProductsWorldConfig(seed=5, categories=("dress", "shirt", "trousers"), train_products_per_category=6,
                              test_products_per_category=4, lookalike_groups_per_category=2, image_size=40)
    build_products(data / "In-shop", asdict(cfg))          # Eval/, Anno/, img/: DeepFashion In-shop's layout
    shutil.copytree(data / "In-shop", data / "Stanford_Online_Products")  # Ebay_{train,test}.txt + images
    partition = (data / "In-shop" / "Eval" / "list_eval_partition.txt").read_text().splitlines()[2:]
    gallery = next(line.split()[0] for line in partition if line.endswith(" gallery"))
    truncate(data / "In-shop" / gallery)                     # a half-written In-shop gallery photo
    sop_test = (data / "Stanford_Online_Products" / "Ebay_test.txt").read_text().splitlines()[1:]
    (data / "Stanford_Online_Products" / sop_test[3].split()[3]).unlink()  # a missing SOP test photo
    resnet_state_dict("resnet18", data / "resnet18-imagenet.pth")

    out = tmp_path / "out"
    wall = run_paper_preset("triplet_product_search", data, out, [
        "model.arch=resnet18", "model.weights_path=resnet18-imagenet.pth", "model.input_size=32", "model.dim=32",
        "train.steps=4", "train.num_pairs=6", "train.lr_milestones=[2]", "checkpoint_every=2",
        "sop.eval_every=2", "sop.eval_products=6", "figures.examples_per_category=2", "figures.n_examples=2",
        "figures.hist_negatives=500"])
    results, figures = out / "results" / "triplet_product_search", out / "figures" / "triplet_product_search"
    tables = {p.stem for p in results.glob("*.csv")}
    assert {"inshop_recall", "inshop_context", "sop_recall", "sop_context", "claims"} <= tables
    assert {"world_examples", "inshop_recall_at_k", "inshop_similarity_hist", "inshop_recall20_per_category",
            "inshop_top1_category_confusion", "inshop_retrieval_examples", "inshop_training_curves",
            "sop_recall1_vs_steps", "sop_training_curves"} <= {p.stem for p in figures.glob("*.png")}
    prov = provenance(out, "triplet_product_search", "inshop_recall")
    assert prov["preset"] == "paper"
    (skipped,) = prov["skipped_inputs"].values()
    assert skipped["by_reason"] == {"corrupt image": 1, "missing image": 1}
    recall = pd.read_csv(results / "inshop_recall.csv")
    assert set(recall["dataset"]) == {"DeepFashion In-shop"} and set(recall["preset"]) == {"paper"}
    print(f"triplet paper-preset rehearsal: {wall:.0f} s")


# --------------------------------------------------------------------------------------------------- MAAF

def write_maaf_root(data: Path) -> None:
    """The five datasets in their published layouts under `data` (the folders the notebook reads)."""
    from visualsearch.data.fashion_text import (FashionTextConfig, build_birds_to_words, build_fashion200k,
                                                build_fashion_iq)
    from visualsearch.data.scenes import ScenesWorldConfig, build_css, build_spot_the_diff

    text = asdict(FashionTextConfig(seed=1, image_size=32, fiq_pairs=(8, 4, 1), f200k_products=(6, 4),
                                    f200k_queries=6, b2w_pairs=(8, 3, 3)))
    scenes = asdict(ScenesWorldConfig(seed=1, image_size=32, train_scenes=8, test_scenes=4, spot_pairs=(8, 2, 3)))
    build_fashion_iq(data / "fashioniq", text)
    build_css(data / "css", scenes)
    build_fashion200k(data / "fashion200k", text)
    build_birds_to_words(data / "birds-to-words", text)
    build_spot_the_diff(data / "spot-the-diff", scenes)
    truncate(sorted((data / "birds-to-words" / "images").glob("*.jpg"))[0])  # a half-written photo
    val = json.loads((data / "fashioniq" / "image_splits" / "split.dress.val.json").read_text())
    (data / "fashioniq" / "images" / f"{val[-1]}.png").unlink()  # a missing Fashion IQ image


MAAF_SETS = ["backbone=resnet18", "image_size=32", "threads=2", "model.dim=32", "model.heads=4", "model.ff_width=32",
             "dataset_model.css.ff_width=32", "train.batch_size=4", "curves_every=1",
             "examples=1", "steps={fashioniq: 2, css: 2, fashion200k: 2, birds_to_words: 2, spot_the_diff: 2}",
             "ablation_steps=2",
             "lr_milestones={fashioniq: [1], css: [1], fashion200k: [1], birds_to_words: [1], spot_the_diff: [1]}"]


@pytest.mark.paper_preset
@pytest.mark.slow
def test_maaf_paper_preset_on_the_five_layouts_with_local_weights(tmp_path):
    data = tmp_path / "data"
    write_maaf_root(data)
    resnet_state_dict("resnet18", data / "resnet18-imagenet.pth")
    out = tmp_path / "out"
    wall = run_paper_preset("maaf_ablations", data, out, MAAF_SETS + ["backbone_weights=resnet18-imagenet.pth"])
    results, figures = out / "results" / "maaf_ablations", out / "figures" / "maaf_ablations"
    tables = {p.stem for p in results.glob("*.csv")}
    assert {"fiq_recall", "css_recall", "fashion200k_recall", "birds_to_words_recall", "spot_the_diff_recall",
            "ablations", "run_costs", "claims", "css_place_attention"} <= tables
    assert {"attention_css_0", "attention_fashioniq_0", "retrieval_fashioniq", "retrieval_css",
            "retrieval_spot_the_diff", "training_curves_fashioniq"} <= {p.stem for p in figures.glob("*.png")}
    prov = provenance(out, "maaf_ablations", "fiq_recall")
    assert prov["preset"] == "paper"
    skipped = {k.split(" (real")[0]: v["by_reason"] for k, v in prov["skipped_inputs"].items()}
    assert skipped["Fashion IQ"] == {"missing image": 1}  # a gallery image no query needs
    assert skipped["Birds-to-Words"] == {"corrupt image": 1, "query with a missing image": 2}
    assert skipped["CSS"] == skipped["Fashion200k"] == skipped["Spot-the-Diff"] == {}
    ablations = pd.read_csv(results / "ablations.csv")
    assert len(set(ablations["method"])) >= 16  # the paper preset's 16 switches and the full model
    print(f"MAAF paper-preset rehearsal: {wall:.0f} s")
