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
# `reported` cell is empty; the claims are checked on this preset's own numbers, as declared (before any result) in
# `configs/cfq_evaluation/default.yaml` and listed below. The experiment grid is the one the authors' released
# scripts run, plus one arm the first claim needs: the same CLIP VA model with no multimodal pretraining.
#
# On the embedded default everything is synthetic and small: the "CLIP" is a small ResNet + MiniLM dual encoder
# pretrained here on products-world photos and attribute captions; Fashion IQ, iMaterialist and CFQ are drawn
# from the same garment renderer in their real file formats. With `data_root` and `model.clip_path` the same code
# runs the real datasets with a real CLIP.

# %% [markdown]
# ## Running this notebook
#
# **Reproduces** the paper's experiment grid (CLIP VA, RAF, AF, TIRG, from scratch; with and without iMFQ weak
# supervision; the controls for misaligned pretraining) scored on Fashion IQ recall, iMaterialist ROC-AUC/mAP and
# CFQ, three of its four claims (each on several training seeds), and its extra datasets (Birds-to-Words,
# MIT-States).
#
# **Run All, by preset** (times on a 2-core CPU):
# - `smoke`, the parameters cell's default (about 45 s the first time): tiny synthetic data and models that test
#   the code, not the paper; its claims read "not evaluated".
# - `default` (several minutes the first time on a 2-core CPU, every training spread over both cores by `workers`
#   processes; under half a minute again with the result cache warm; the committed run's own times are in
#   `results/run_times.json`): synthetic data at a size where the paper's effects show (a small dual encoder at
#   64 px, frozen backbone).
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
# ## The claims, declared before any result
#
# Each claim names two runs of the grid and the per-item scores it compares; `claims.decide` (the project's one
# test of "A beats B") decides it: a paired bootstrap over test items, the per-item differences of every training
# seed pooled. The per-item scores:
#
# - **FIQ (hit@10+hit@50)/2**: per Fashion IQ-style validation query, its 1/0 hit at 10 and at 50 averaged (their
#   mean over queries is the table's (R@10+R@50)/2); queries that share a reference image are resampled together;
# - **CFQ accurate AP, similar AP, nDCG**: per judged (query image, caption) group where the quantity is defined,
#   the groups of every subset pooled (the table's mAP and nDCG weight subsets by their query images instead);
#   groups of one query image are resampled together.
#
# The paper evaluates every model on Fashion IQ and on CFQ, and this notebook has required a claim to hold on all
# four of these numbers since before the protocol: each paper claim below is that **conjunction**, "A beats B" on
# every one of the four per-item scores, each by the test (95% interval of the mean difference above 0).
#
# - *Multimodal pretraining matters*: CLIP VA fine-tuned on FIQ beats the same model trained on FIQ from scratch,
#   at the new-parameter rate (10x CLIP VA's) and at CLIP VA's own rate (one row, both required). The second
#   from-scratch arm was added (issue 16) because the first alone confounds pretraining with the learning rate.
# - *Domain-specific weak supervision from attribute labels adds to generic large-scale pretraining*: iMFQ then
#   FIQ beats FIQ alone, for CLIP VA and for RAF (two rows).
# - *Earlier fusion mechanisms lose the benefit of multimodal pretraining; residual attention fusion keeps it*:
#   RAF beats CLIP VA fine-tuned and beats AF, the attention branch without the residual path (earlier fusion);
#   one row, RAF must beat each. "Keeps it" read as beating CLIP VA is stricter than the words (a tie would keep
#   it); it is the check this notebook made before the protocol, kept rather than loosened after its results.
# - *Aligned pretraining* (an **extension**: the paper runs the controls for misaligned pretraining but states no
#   claim about them here): CLIP VA fine-tuned from the pretrained dual encoder beats the same model with its text
#   projection scrambled and with another pretrained dual encoder's text tower (one row, both required).
# - *State of the art on Fashion IQ at the time* is **not checked**: it compares the paper's numbers on the real
#   Fashion IQ with other methods' published ones, and neither the paper's numbers (unknown here) nor a synthetic
#   world can speak to that.
#
# The paper's claims rest on `claim_tests.seeds` training seeds of each run they compare (model initialisation and
# batches; the pretrained dual encoder, the worlds and the data are the preset seed's). The two rows "with scarce
# Fashion IQ-style data" are **exploratory**: added after the full-data claims failed (2026-11-27), not claims of
# the paper, decided at every share of the data-limited sweep on its one seed. For the time budget (issue 17) the
# default preset trains 2 seeds (was 3) and sweeps one share of the data (was three).

# %%
declared = claims.declared_claims(p)
print(f"training seeds of the paper claims' runs: {[p.seed + k for k in range(p.claim_tests['seeds'])]}; "
      f"bootstrap resamples per comparison: {p.claim_tests['n_boot']}")
show(claims.declared_table(declared))

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
# - the extra datasets, each when its folder is there: `birds-to-words/birds-to-words-v1.0.tsv` and
#   `birds-to-words/images/`, and MIT-States' `mit-states/release_dataset/images/<adj noun>/*.jpg`;
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
#
# A second dual encoder is pretrained the same way with another seed (`pretrain.mismatch_seed`; on the paper preset,
# a second CLIP under `model.mismatch_clip_path`): the paper's "mismatch" control takes its text tower.

# %%
exp.pretrain_all()  # with `workers` > 1: both dual encoders at once, one process each
print(exp.pretraining_summary())

# %% [markdown]
# ## The experiment grid
#
# Every run is evaluated on three benchmarks: Fashion IQ-style validation recall (R@10, R@50 per category,
# reference excluded from its ranking), iMaterialist-style validation ROC-AUC over all query x gallery pairs and
# mAP (a gallery image is correct when its label set equals the target's), and CFQ's three primary metrics
# (per-(query, caption) mean AP and nDCG, subsets weighted by their number of query images). Runs are cached:
# re-running the notebook only redraws.
#
# Beside the paper's runs and the from-scratch arm:
#
# - **`scratch-fiq-va-lr`**: the from-scratch arm at CLIP VA's learning rate (`train.va_lr`). `scratch-fiq` trains at
#   the new-parameter rate, 10x CLIP VA's on this preset, so a comparison of the two arms alone would mix
#   pretraining with the learning rate; both from-scratch arms are shown, and the pretraining claim must beat each.
# - **The paper's controls for misaligned pretraining**, CLIP VA fine-tuned on FIQ like `clip-fiq`, from a pretrained
#   dual encoder whose text side no longer agrees with its image side: **`clip-scramble-fiq`**, the text
#   projection's input columns permuted, and **`clip-mismatch-fiq`**, the text tower of the second, independently
#   pretrained dual encoder. Each tower is as pretrained as in `clip-fiq`; only their alignment is gone.
#
# Every training of the notebook (this grid, the claims' further seeds and the data-limited sweep below) is run
# here at once, in `workers` forked processes sharing the data, the frozen features and the text states; the later
# cells read their results from the cache.

# %%
exp.prefetch(exp.jobs(claims.seeded_runs(declared, p.claim_tests["on_data_limited"])))
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
# ## The paper's extra datasets: Birds-to-Words and MIT-States
#
# The paper also scores CLIP VA zero-shot and fine-tuned, AF, RAF and TIRG on Birds-to-Words (a reference photo
# and a paragraph comparing it with the target: "animal1 is plain but animal2 is striped") and MIT-States (an
# object in one state and the name of another state: the target is the same kind of object in that state; the test
# objects are never seen in training). Each model starts as in the grid (pretrained dual encoder, new layers drawn
# with the seed) and is trained on the dataset's own training pairs, with the Fashion IQ stage's settings but only
# `extra.steps` steps (few, for the time budget); Recall@k is that dataset's usual one. On the embedded default both
# are synthetic worlds in the published layouts: Birds-to-Words-style garment pairs (`data.fashion_text`) and
# MIT-States-style drawn objects in states (colours, patterns, sizes, "broken") under real MIT-States noun names, so
# the protocol's noun split applies (`data.mit_states`). One seed; no claim is decided on them.

# %%
exp.run_extra_all()
rep.table("extra_datasets", tables.extra_table(exp.extra_results, d.descriptions),
          data="; ".join(d.descriptions[n] for n in d.extra),
          note=f"Recall@k in percent, one seed; every model trained {p.extra['steps']} steps on the dataset's own "
               "training pairs (zero-shot: none); the reference image is dropped from its own ranking.")

# %% [markdown]
# ## Beyond the paper: does pretraining need scarce task data to pay?
#
# The paper fine-tunes a CLIP pretrained on 400M image-text pairs with Fashion IQ's 18k triplets; here the
# "CLIP" saw a few thousand synthetic captions, and the Fashion IQ-style training set is of a similar size. A
# from-scratch model can then learn the task from the task data alone, and pretraining has less to add. This
# sweep (`data_limited` in the presets) retrains CLIP VA with and without pretraining, RAF and AF on nested
# shares of the Fashion IQ-style training pairs (one share, a quarter, on the default preset since issue 17's time
# budget; three before), with the same steps and learning rates, and scores each on the four
# headline numbers. It tests a condition of the first and third claims, not a number of the paper; it was added
# after the full-data claims failed, so what it shows is exploratory (its two rows in the claims table say so).

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
# ## The paper's claims, checked on this preset
#
# The runs the paper's claims compare, trained again at the other training seeds (the grid above is the first
# seed), then every declared claim decided. A claim that does not hold is reported with its numbers: the detail
# gives, per per-item score, A's mean, then against each B the mean difference and its 95% interval. At the smoke
# preset (the parameters cell's default) the checks draw no verdict ("not evaluated (smoke size)"); the committed
# default run holds the verdicts, in `results/cfq_evaluation/claims.md`.

# %%
t = p.claim_tests
seeded = exp.run_seeds(claims.seeded_runs(declared, t["on_data_limited"]))
rep.table("claim_runs_by_seed", tables.seed_table(seeded, exp.training_seeds(), "FIQ-style val and CFQ"),
          data=d.descriptions["fashion_iq"] + "; " + d.descriptions["cfq"],
          note="The four headline numbers (percent) of every run a paper claim compares, at each training seed "
               "(model initialisation and batches; the pretrained dual encoder, the worlds and the data are the "
               "preset seed's). The claims pool the seeds' per-item scores.")

# %%
claims.decide_claims(declared, seeded, exp.limited, p.data_limited["shares"], exp.pair_counts(), rep,
                     on_data_limited=t["on_data_limited"], n_boot=t["n_boot"])
rep.claims_table()

# %% [markdown]
# **How to read a split verdict.** Fashion IQ-style recall and CFQ's labels ask different things of a model (the
# target of one caption, against graded accuracy and similarity judgments of several catalog items), and at this
# scale a comparison can go one way on one and the other way on the other at every seed: the table
# `claim_runs_by_seed` shows each seed's numbers, and each claim's detail which of the four scores decided it.

# %% [markdown]
# ## Caveats
#
# - **Scale.** The embedded default's dual encoder is tiny and pretrained for minutes on one synthetic domain;
#   "generic" pretraining and "domain" weak supervision are therefore closer to each other than CLIP and iMFQ are.
# - **Frozen backbone.** With `model.freeze_backbone` the image backbone gets no gradient after pretraining (the
#   paper gives it 1e-6 against 1e-5); the image projection and text tower keep the lower rate. No augmentation.
#   `--set model.freeze_backbone=false` trains it at the lower rate, as the paper does, at a cost over the default
#   preset's budget; no such run is committed.
# - **Seeds.** The training seeds vary what is drawn for each run (new layers, the from-scratch model, batches);
#   the pretrained dual encoder, the iMFQ neighbours and the worlds are those of the preset's `seed`, as the paper
#   fine-tunes one CLIP. The data-limited sweep is one seed.
# - **Text tower.** MiniLM is frozen and encodes each phrase of a caption separately (cached); a trainable block
#   relates the phrases.
# - **Neighbour rule.** The paper's rule for iMFQ pairs was not released; ours is "one label added, removed or
#   replaced".
# - **CFQ scoring.** Groups are (query image, caption); R-precision is a fraction; see `visualsearch.cfq_metrics`
#   for every difference from the released code, each available as an option where it changes numbers.
# - **Paper preset.** transformers has no ResNet CLIP; a ViT CLIP (e.g. ViT-B/32: 7 x 7 patch tokens) replaces RN50.
#   The mismatch control needs a second CLIP of the same architecture (`model.mismatch_clip_path`).
# - **Misaligned pretraining.** On the embedded default the "other CLIP" of the mismatch control is a second small dual
#   encoder pretrained the same way on the same synthetic corpus with another seed: independent in its
#   initialisation and batches, not in its data.
# - **Extra datasets.** Trained for `extra.steps` steps only, one seed, synthetic worlds far smaller than the real
#   Birds-to-Words and MIT-States; read them as a check that the pipeline runs the paper's protocol on them, not as
#   evidence about the models.

# %%
import pandas as pd
show(pd.Series(exp.timings, name="seconds (this session, or when cached)").rename_axis("run").reset_index())
