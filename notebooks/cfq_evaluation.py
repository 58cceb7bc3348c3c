# ---
# jupyter:
#   kernelspec:
#     display_name: visualsearch (Python 3.11)
#     language: python
#     name: visualsearch
# ---

# %% [markdown]
# # Training and challenging models for text-guided fashion image retrieval
#
# Dodds, Culpepper and Srivastava ([arXiv 2204.11004](https://arxiv.org/abs/2204.11004)) ask what makes a model
# good at retrieving a garment from a reference image and a text ("like this, but blue and without stripes"). They
#
# 1. introduce **Challenging Fashion Queries (CFQ)**: queries whose judged catalog items carry *positive and
#    negative* labels of two things, whether the caption is **accurate** for the item and whether the item is
#    **similar** to the reference image;
# 2. show that **multimodal pretraining matters** (CLIP), and that **weak supervision from attribute labels**
#    (captions made mechanically from the difference of iMaterialist label sets, "iMFQ") adds to it;
# 3. propose **residual attention fusion (RAF)**: CLIP's vector addition plus a small, fixed-weight MAAF attention
#    branch, initialised so that the model *starts* as CLIP VA; earlier fusion (the attention branch alone, AF)
#    loses part of what pretraining gave.
#
# The paper's tables are not known here (the companion could not verify any of its numbers), so every
# `reported` cell is empty; the claims are checked on this preset's own numbers. The experiment grid is the one
# the authors' released scripts run, plus one arm the first claim needs: the same CLIP VA model with no
# multimodal pretraining.
#
# On the embedded default everything is synthetic and small: the "CLIP" is a small ResNet + MiniLM dual encoder
# pretrained here on products-world photos and attribute captions; Fashion IQ, iMaterialist and CFQ are drawn
# from the same garment renderer in their real file formats. With `data_root` and `model.clip_path` the same code
# runs the real datasets with a real CLIP.

# %% [markdown]
# ## Running this notebook
#
# **Reproduces** the paper's experiment grid (CLIP VA, RAF, AF, TIRG, from scratch; with and without iMFQ weak
# supervision) scored on Fashion IQ recall, iMaterialist ROC-AUC/mAP and CFQ, and its three claims.
#
# **Run All, by preset** (times on a 2-core CPU):
# - `smoke`, the parameters cell's default (about 35 s the first time): tiny synthetic data and models that test
#   the code, not the paper; its claims read "not evaluated".
# - `default` (roughly 8-11 minutes the first time on an idle 2-core CPU, under half a minute again with the result
#   cache warm; the committed run's own times are in `results/run_times.json`): synthetic data at a size where the paper's effects show (a small dual encoder
#   at 64 px, frozen backbone).
# - `paper` (meant for a GPU; its time is not measured here): the real Fashion IQ, iMaterialist and CFQ under
#   `data_root`, a real CLIP (`model.clip_path`, required with a data root: the run stops at once, naming it,
#   when it is not set) and the paper's schedules. Each training checkpoints every `checkpoint_every` steps
#   (500 at this preset) and a killed run resumes where it stopped.
#
# - **Switch preset:** set `preset = "default"` in the parameters cell below. To change one parameter, e.g. the
#   seed of model initialisation and batches: `overrides = {"seed": 1}` (every parameter is in
#   `configs/cfq_evaluation/default.yaml`).
# - **Where outputs go:** a run from JupyterLab writes to `scratch/<preset>/results/cfq_evaluation/` and
#   `scratch/<preset>/figures/cfq_evaluation/` (git-ignored; the cell after the parameters prints where). Only
#   `./run_all.sh` at the default preset writes the committed `results/` and `figures/`.
# - **The committed default run:** `results/cfq_evaluation/cfq_evaluation.ipynb` (executed, every figure inline),
#   its verdicts in `results/cfq_evaluation/claims.md`, all four papers on one page in `results/index.md`.
# - **Saving:** JupyterLab saves this notebook *without its outputs*, by design: the source stays clean for review,
#   and outputs live in the executed copies. To keep a run with its outputs, save a copy into `scratch/`
#   (File > Save Notebook As...).

# %% tags=["parameters"]
preset = "smoke"      # smoke | default | paper
data_root = None      # folder with the real dataset(s); None = synthetic world
device = "cpu"        # cpu | cuda
out_dir = None        # where results/ and figures/ go; None = scratch/<preset>/ (git-ignored)
overrides = {}        # parameter overrides, validated against configs/cfq_evaluation/default.yaml

# %%
import torch

from visualsearch.config import load_params
from visualsearch.papers.cfq import claims, experiment, figures, tables
from visualsearch.papers.cfq.data import load_data
from visualsearch.report import Reporter, show

p = load_params("cfq_evaluation", preset, overrides, data_root=data_root, device=device, out_dir=out_dir)
rep = Reporter("cfq_evaluation", p)
cache = experiment.result_cache()
rep.cache = cache
if p.threads:
    torch.set_num_threads(p.threads)  # small models: one thread per notebook avoids oversubscribed cores

# %% [markdown]
# ## The data
#
# Four sources, each read by the reader of its real format:
#
# - **pretraining pairs** (embedded default only): products-world photos with generic attribute captions
#   ("a blue striped dress, with long sleeves");
# - **Fashion IQ style**: reference -> target pairs with two relative captions, joined by "inadditiontothat";
# - **iMaterialist style**: images with attribute labels; each is paired with *neighbours* whose label set
#   differs by one label added, removed or replaced (the paper's rule was not released; this is ours), and a
#   caption is written from the difference by the released rules ("floral", "not Floral", "shorter sleeves",
#   "Blue not Red");
# - **CFQ**: `judgments.tsv` with one row per annotator judgment, `equivalent_captions.json`, `images/`. Three
#   catalog images are missing from the real release; the synthetic one leaves three out too, and the reader
#   skips the judgments that need them and counts them.
#
# **What it reads under `data_root`** (the published layouts; every file is checked before anything is read):
# - `fashioniq/captions/cap.{dress,shirt,toptee}.{train,val}.json`,
#   `fashioniq/image_splits/split.{dress,shirt,toptee}.{train,val}.json` and the images as
#   `fashioniq/images/{asin}.png|.jpg` or the authors' `fashioniq/img/{category}/{asin}[.jpg|.png]`;
# - `imaterialist/imat2018_label_map.tsv` (`labelId<TAB>labelName`), `imaterialist/train.json` and
#   `imaterialist/validation.json` (Kaggle's iMaterialist Fashion 2018 layout; the released
#   `{split}_with_neighbors.json` is used instead when present) and the images as
#   `imaterialist/images_{train,validation}/{id:07d}[:3]/{id:07d}.jpeg`;
# - `cfq/judgments.tsv`, `cfq/equivalent_captions.json`, `cfq/images/{hash}.jpeg`;
# - and, outside it, a local CLIP folder (`model.clip_path`: `config.json`, the weights and the tokenizer files as
#   transformers' `save_pretrained` writes them); `model.image_size` must be its input size.
#
# Missing or unreadable images are skipped and counted (the counts are in every table's provenance sidecar).

# %%
d = load_data(p)
exp = experiment.CFQExperiment(p, d, cache)
for name, description in d.descriptions.items():
    rep.note_data(description, d.fingerprints[name], d.skips.get(name))
print(f"{len(d.images)} images; Fashion IQ-style training pairs {len(d.fiq_train)}; "
      f"iMFQ pairs {len(d.imfq_train)}; CFQ judged pairs {len(d.cfq_agg)} "
      f"({d.cfq.dropped_judgments} judgments dropped: {d.skips['cfq']})")
print("iMFQ captions:", sorted({c[0] for c in d.imfq_train.captions})[:12])

# %% [markdown]
# ## What CFQ's labels look like
#
# Each (query, caption, catalog item) is judged by several annotators; the mean accuracy and similarity lie in
# [-1, 1]. A binary label at threshold t is `mean > t`; the paper's primary metrics use **accurate >= 0** (the
# threshold named `accurate_0`, i.e. > -0.01) and **similar > -2/3** (`similar_-2/3`, i.e. > -0.67: a mean of
# exactly -2/3 counts as similar). nDCG uses the graded relevance int(3 (acc + sim + 2)) in 0..12.

# %%
fig = figures.judgment_histogram(d.cfq_agg)
rep.figure("judgment_histogram", fig, data=d.descriptions["cfq"])

# %% [markdown]
# ## Multimodal pretraining
#
# The embedded default's stand-in for CLIP: a small ResNet image tower and a text tower (frozen MiniLM token
# states + one trainable Transformer block), trained with CLIP's symmetric contrastive loss. On the paper preset
# this step loads a real CLIP instead. After it, the image backbone is frozen and its features cached (the paper
# trains it at a tenth of the new layers' rate; see the caveats at the end). The "no pretraining" arm
# (`scratch-fiq`) never sees these weights: it is the same architecture with a random initialisation drawn with the
# seed, on every preset (on the embedded default, only the frozen MiniLM word-piece states under its text tower
# are pretrained: a text-only model that every arm shares).

# %%
print(exp.pretraining_summary())

# %% [markdown]
# ## The experiment grid
#
# Every run is evaluated on three benchmarks: Fashion IQ-style validation recall (R@10, R@50 per category,
# reference excluded from its ranking), iMaterialist-style validation ROC-AUC over all query x gallery pairs and
# mAP (a gallery image is correct when its label set equals the target's), and CFQ's three primary metrics
# (per-(query, caption) mean AP and nDCG, subsets weighted by their number of query images). Runs are cached:
# re-running the notebook only redraws.

# %%
exp.run_all()
grid = rep.table("experiment_grid", tables.grid_table(exp.results, d.descriptions),
                 data="; ".join(d.descriptions.values()),
                 note="Scores in percent. CFQ metrics group judgments by (query image, caption); the released "
                      "code groups by caption text alone (eval.group_by: caption).")
grid

# %%
rep.table("cfq_by_threshold", tables.cfq_threshold_table(exp.results, d.descriptions["cfq"]),
          data=d.descriptions["cfq"],
          note="m_ap / m_auc / rprec: mean over (query, caption) groups with both classes (R-precision: with a "
               "positive) of AP, ROC-AUC and R-precision (as a fraction), at every threshold; weighted over subsets.")

# %%
fig = figures.training_curves(exp.pretrain_log, exp.stage_logs())
rep.figure("training_curves", fig, data="; ".join(d.descriptions.values()))

# %% [markdown]
# ## Figure 1, on this preset
#
# For example queries (drawn with the seed, not picked by result): the query image and caption, the most relevant
# judged catalog items, and the top-ranked judged items of CLIP VA fine-tuned on Fashion IQ and of RAF trained on
# iMFQ then Fashion IQ. Corner squares: mean accuracy (left) and mean similarity (right), red -1 to green +1.

# %%
fig = figures.figure1(d.cfq_agg, exp.judged_scores(("clip-fiq", "raf-imfq-fiq")), d.cfq.load_image,
                      n_queries=p.figure1["queries"], top_k=p.figure1["top_k"], seed=p.seed)
rep.figure("figure1_examples", fig, data=d.descriptions["cfq"])

# %% [markdown]
# ## Beyond the paper: does pretraining need scarce task data to pay?
#
# The paper fine-tunes a CLIP pretrained on 400M image-text pairs with Fashion IQ's 18k triplets; here the
# "CLIP" saw a few thousand synthetic captions, and the Fashion IQ-style training set is of a similar size. A
# from-scratch model can then learn the task from the task data alone, and pretraining has less to add. This
# sweep (`data_limited` in the presets) retrains CLIP VA with and without pretraining, RAF and AF on nested
# shares of the Fashion IQ-style training pairs (same steps and learning rates) and scores each on the four
# headline numbers. It tests a condition of the first and third claims, not a number of the paper.

# %%
exp.run_data_limited()
limited = tables.data_limited_table(exp.results, exp.limited, p.data_limited["runs"], exp.pair_counts())
rep.table("data_limited", limited, data=d.descriptions["fashion_iq"] + "; " + d.descriptions["cfq"],
          note="Each run's Fashion IQ stage trained on a share of the FIQ-style training pairs (nested subsets drawn "
               "with the seed; same steps and learning rates); scores in percent, one seed.")

# %%
fig = figures.data_limited_figure(limited)
rep.figure("data_limited", fig, data=d.descriptions["fashion_iq"] + "; " + d.descriptions["cfq"])
print("pretrained CLIP VA minus the same model from scratch, by FIQ-style training pairs:")
show(tables.pretraining_margins(limited))

# %% [markdown]
# **What the sweep showed at the default preset** (not this run's numbers: this notebook at seeds 0 / 1 / 2 via
# `--set seed=N`, 2026-11-27; seed 0 is the committed default run, `results/cfq_evaluation/`, seeds 1 and 2 are not
# committed; the worlds are the same, the model initialisation and batches change):
# - **Pretraining vs none turns on the amount of task data.** With 300, 150 or 75 Fashion IQ-style pairs the
#   pretrained CLIP VA beats the same model from scratch on all four headline numbers at every share and every
#   seed; on Fashion IQ-style recall by +13.8 / +8.2 / +8.7 (300 pairs), +20.5 / +22.7 / +19.8 (150) and +26.0 /
#   +24.3 / +20.7 (75), on CFQ accurate mAP by +5.3 to +13.0. With all 600 pairs the from-scratch model overtakes it
#   on recall (by 3.8 / 5.7 / 6.0) while pretraining keeps its CFQ accurate mAP lead (+6.4 / +2.7 / +4.3). The
#   paper's setting, a large pretraining corpus next to a small task set, is the scarce end of this sweep; this
#   world's full training set is large next to its pretraining corpus.
# - **RAF vs AF does not turn on it.** RAF wins CFQ accurate mAP at every share and seed (+3.4 to +10.8) and AF
#   wins CFQ similar mAP at every share and seed (by 0.6 to 2.7); Fashion IQ-style recall goes to AF with all the
#   data and either way with less. RAF vs CLIP VA: RAF wins similar mAP and nDCG almost everywhere and loses
#   accurate mAP by up to 4.4 almost everywhere. So the third claim fails at every share, on the similar-mAP side.

# %% [markdown]
# ## The paper's claims, checked on this preset
#
# Each claim is a comparison of runs on all four headline numbers (Fashion IQ-style (R@10+R@50)/2 and the three
# CFQ primary metrics); it holds only if every one of them moves the claimed way. A claim that does not hold is
# reported with its numbers. The first three rows are the paper's claims on the grid (all the Fashion IQ-style
# training data); the rows "with scarce Fashion IQ-style data" repeat the first and third at every share of the
# sweep above, a condition under which the paper's setting (a large pretraining corpus, a small task set) is
# closer. At the smoke preset (the parameters cell's default) the checks draw no verdict ("not evaluated (smoke
# size)"); the committed default run holds the verdicts, in `results/cfq_evaluation/claims.md`.

# %%
claims.check_claims(exp.results, exp.limited, p.data_limited["shares"], exp.pair_counts(), rep)
rep.claims_table()

# %% [markdown]
# **How much of this is noise** (default preset; not this run's numbers). Each run is one seed, and at the
# default preset Fashion IQ-style validation has 100 queries per category, so (R@10+R@50)/2 moves by a few points
# between seeds. The same notebook rerun with `--set seed=1` and `--set seed=2` (model initialisation and batches;
# same worlds; 2026-11-27, not committed) gave, for seeds 0 / 1 / 2 (seed 0: the committed default run) on the
# full training set:
# - pretraining vs none: the from-scratch model wins Fashion IQ recall every time (by 3.8 / 5.7 / 6.0) while
#   pretraining wins CFQ accurate mAP every time (+6.4 / +2.7 / +4.3): a stable split, not noise (and, per the
#   sweep, a property of plentiful task data);
# - iMFQ on top: Fashion IQ recall gains every time for both models (+3.8 / +6.8 / +3.3 with VA, +7.3 / +5.3 /
#   +3.2 with RAF), while the CFQ metrics move by about a point either way; the all-four check passes on seed 1 only;
# - RAF vs AF: AF wins Fashion IQ recall every time (by 3.8 / 5.2 / 2.8) and RAF wins CFQ accurate mAP every time
#   (+4.1 / +3.4 / +6.4): again a stable split.
#
# Beyond seeds, the from-scratch and AF runs are sensitive to floating-point detail: a change of the library that
# does not touch their training (a new retrieval evaluator and the sweep's bookkeeping, 2026-11-27) moved seed 0's
# from-scratch Fashion IQ recall from 65.8 to 62.8 and AF's from 65.2 to 65.5 (the committed default run has the
# later numbers), while every other run kept its numbers to the last digit. A rerun of the same code gives the
# same numbers.

# %% [markdown]
# ## Caveats
#
# - **Scale.** The embedded default's dual encoder is tiny and pretrained for minutes on one synthetic domain;
#   "generic" pretraining and "domain" weak supervision are therefore closer to each other than CLIP and iMFQ are.
# - **Frozen backbone.** With `model.freeze_backbone` the image backbone gets no gradient after pretraining (the
#   paper gives it 1e-6 against 1e-5); the image projection and text tower keep the lower rate. No augmentation.
#   Tried at the default preset: `--set model.freeze_backbone=false` (the backbone at the lower rate, as the
#   paper; 652 s, over the default preset's budget; seed 0, 2026-11-27, not committed) gave the same picture: from
#   scratch still wins Fashion IQ recall (62.8 vs 59.2) while pretraining wins CFQ accurate mAP (+4.5); iMFQ still
#   helps recall (+7.2 VA, +6.7 RAF) and not CFQ accurate mAP (-1.2, -0.5); RAF now beats CLIP VA on all four
#   numbers (+3.8, +0.3, +0.3, +0.5) but still loses recall (-1.8) and similar mAP (-2.0) to AF.
# - **Text tower.** MiniLM is frozen and encodes each phrase of a caption separately (cached); a trainable block
#   relates the phrases.
# - **Neighbour rule.** The paper's rule for iMFQ pairs was not released; ours is "one label added, removed or
#   replaced".
# - **CFQ scoring.** Groups are (query image, caption); R-precision is a fraction; see `visualsearch.cfq_metrics`
#   for every difference from the released code, each available as an option where it changes numbers.
# - **Paper preset.** transformers has no ResNet CLIP; a ViT CLIP (e.g. ViT-B/32: 7 x 7 patch tokens) replaces RN50.

# %%
import pandas as pd
show(pd.Series(exp.timings, name="seconds (this session, or when cached)").rename_axis("run").reset_index())
