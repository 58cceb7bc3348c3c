# ---
# jupyter:
#   kernelspec:
#     display_name: visualsearch (Python 3.11)
#     language: python
#     name: visualsearch
# ---

# %% [markdown]
# # Deep Architectures for Face Attributes: how deep should each attribute branch from an identity network?
#
# Baumgartner and Culpepper (ACCV 2016 workshop, [arXiv 1609.09018](https://arxiv.org/abs/1609.09018)) train a
# CNN to recognise **identities**, then fine-tune it for **age, gender, ethnicity and emotion**. Instead of
# training one layer on the penultimate identity features, they try several **fine-tuning depths** per attribute
# and report that **age and emotion improve when fine-tuned from earlier layers**, because deeper identity
# layers are progressively invariant to what does not tell people apart. Then they pick a **sharing pattern** so
# that all four predictions cost **about 1 GFLOP**.
#
# This notebook regenerates that experiment:
#
# 1. an identity trunk (a compact residual CNN in 4 stages) trained on people it will never be tested on;
# 2. for each attribute and each branch depth L (stages shared and frozen: 0 = none, 4 = only a new head), a
#    copy of the stages after L plus a new head is fine-tuned, over several seeds;
# 3. baselines: head only (share everything), one separate network per attribute (share nothing), the same
#    network trained from scratch, and a **capacity control**: branching earlier also trains more layers, so the
#    control trains *the same small probe* (1x1 projection, one residual block, pooled 3x3 grid, linear head;
#    parameters equal within ~10%) on the frozen features at every depth;
# 4. every sharing pattern (one depth per attribute) costed with `torch.utils.flop_counter` on the network whose
#    accuracies are reported, the most accurate one within 1 GFLOP built as one multi-head network, and the paper's
#    budget checked on the paper preset's wider network at its 112 px input.
#
# The paper's data are private and its per-depth numbers are not known; the default preset runs on a synthetic
# faces world written in FairFace's format, built so that emotion (and part of age) varies from photo to photo of
# the same person, i.e. is a nuisance for identity.

# %% [markdown]
# ## Running this notebook
#
# **Reproduces** the paper's per-attribute accuracy by branch depth from an identity network, and its sharing
# pattern for all four attributes within 1 GFLOP.
#
# **Run All, by preset** (times on a 2-core CPU):
# - `smoke`, the parameters cell's default (about 40 s the first time): tiny synthetic data and models that test
#   the code, not the paper; its claims read "not evaluated".
# - `default` (about 5 minutes the first time on an idle 2-core CPU, under half a minute again with the result
#   cache warm; the committed run's own times are in `results/run_times.json`): synthetic faces at a size where the
#   paper's effects show (40 px, 3 fine-tuning seeds). Training runs in channels-last layout with bfloat16 autocast
#   (`precision: bf16`, about twice as fast on CPUs with AMX or AVX512-BF16; `overrides = {"precision": "fp32"}`
#   for plain float32).
# - `paper` (meant for a GPU; its time is not measured here): the real identity, FairFace and FER2013 data under
#   `data_root` (listed in "The data" below; every path is checked before anything is read), a wider trunk at
#   112 px and long schedules. Each training checkpoints every `checkpoint_every` steps (2000 at this preset) and a
#   killed run resumes where it stopped.
#
# - **Switch preset:** set `preset = "default"` in the parameters cell below. To change one parameter, e.g. the
#   fine-tuning steps of every branch: `overrides = {"finetune": {"steps": 300}}` (every parameter is in
#   `configs/face_attribute_sharing/default.yaml`).
# - **Where outputs go:** a run from JupyterLab writes to `scratch/<preset>/results/face_attribute_sharing/` and
#   `scratch/<preset>/figures/face_attribute_sharing/` (git-ignored; the cell after the parameters prints where).
#   Only `./run_all.sh` at the default preset writes the committed `results/` and `figures/`.
# - **The committed default run:** `results/face_attribute_sharing/face_attribute_sharing.ipynb` (executed, every
#   figure inline), its verdicts in `results/face_attribute_sharing/claims.md`, all four papers on one page in
#   `results/index.md`.
# - **Saving:** JupyterLab saves this notebook *without its outputs*, by design: the source stays clean for review,
#   and outputs live in the executed copies. To keep a run with its outputs, save a copy into `scratch/`
#   (File > Save Notebook As...).

# %% tags=["parameters"]
preset = "smoke"      # smoke | default | paper
data_root = None      # folder with the real dataset(s); None = synthetic world
device = "cpu"        # cpu | cuda
out_dir = None        # where results/ and figures/ go; None = scratch/<preset>/ (git-ignored)
overrides = {}        # parameter overrides, validated against configs/face_attribute_sharing/default.yaml

# %%
import pandas as pd
import torch

from visualsearch.config import load_params
from visualsearch.data.faces import EMOTIONS, emotion_grid
from visualsearch.flops import count_flops
from visualsearch.papers.face import claims, experiment, figures, sharing, tables
from visualsearch.papers.face.data import ATTRIBUTES, load_data, world_config
from visualsearch.report import Reporter, context_rows, show

p = load_params("face_attribute_sharing", preset, overrides, data_root=data_root, device=device, out_dir=out_dir)
rep = Reporter("face_attribute_sharing", p)
if p.threads:
    torch.set_num_threads(p.threads)
cache = experiment.result_cache()
rep.cache = cache

# %% [markdown]
# ## The data
#
# Three disjoint sets of people: identity pretraining (folder per identity), attribute fine-tuning and attribute
# test (FairFace-style CSVs with `file,age,gender,race,service_test` plus `emotion` and `identity`).
#
# **What it reads under `data_root`** (the paths of `p.data`, relative to `data_root`; the paper preset's are):
# - `identities/<person>/<image>.jpg|.png|...`: the identity-pretraining set, one folder per person (CASIA-WebFace,
#   VGGFace2 or CelebA by identity); people with fewer than `data.min_images_per_identity` readable images are left
#   out;
# - `fairface_label_train.csv` and `fairface_label_val.csv` (FairFace's `file,age,gender,race,service_test`) with
#   the images they name, `train/<n>.jpg` and `val/<n>.jpg`, beside them (`data.fairface_images`): age, gender and
#   ethnicity for fine-tuning and test;
# - `fer2013.csv` (FER2013's `emotion,pixels,Usage`): emotion; its Training rows join fine-tuning,
#   PublicTest/PrivateTest the test set.
#
# An attribute a dataset lacks is left out of that dataset's training and scoring. FairFace and FER2013 carry no
# identity labels, so on them the trunk's identity-retrieval check cannot be computed and its table says so.
# Missing or corrupt images are skipped and counted in every table's provenance. (UTKFace, which the library can
# also read, is not used: its five race groups do not map onto FairFace's seven and it has no split or identities,
# so it would add a second label scheme to the same table without serving a step of the protocol.)

# %%
data = load_data(p)
rep.note_data(data.description, data.fingerprint, data.skips)
DATA = data.description
DATASET = "synthetic faces" if data_root is None else "real faces"
print(DATA)
print(f"pretraining: {len(data.pretrain)} images of {data.n_identities} people; attribute train {len(data.train)}, "
      f"test {len(data.test)} images; {data.skips}")

# %% [markdown]
# Each row is one person (gender, ethnicity group and base age are fixed per person), each column an emotion.
# Emotion changes only the mouth, brows and eyes, and is drawn independently of the person in every photo;
# age varies around the person's base age from photo to photo (wrinkles, greying, sag).

# %%
if data_root is None:
    rows, people = emotion_grid(world_config(p), p.figures.n_grid_identities, size=64)
    fig = figures.plot_face_grid(rows, list(EMOTIONS), [f"{i.gender}, {i.race[:12]}, {i.base_age:.0f} y" for i in people])
    rep.figure("faces_identities_by_emotion", fig, data=DATA)

# %% [markdown]
# ## 1. The identity trunk
#
# Trained to classify the pretraining people. Its quality is checked on people it never saw: rank-1
# nearest-neighbour identity retrieval among the attribute-test images, using the pooled penultimate features.

# %%
trunk, trunk_info, trunk_key = experiment.train_identity_trunk(data, p, cache, device)
identity, identity_note = tables.identity_table(trunk_info, data, DATASET)
if identity_note:
    print(identity_note)
rep.table("identity_trunk", identity, data=DATA, note=identity_note)

# %% [markdown]
# ## 2. Accuracy by attribute and branch depth
#
# Every branch is trained with the same steps and learning rate; the frozen part is in eval mode. Each number
# is a mean over the fine-tuning seeds, with the standard deviation beside it (`std`, `min`, `max` columns in the
# CSV). The from-scratch baseline trains only the first `scratch_seeds` seeds (1 at the default preset, to fit the
# time budget: it is in no claim and its whole-network runs are the grid's costliest; `n_seeds` says so per row). Age is classified over FairFace's 9 bins; its MAE is in years from the predicted bin's centre.

# %%
runs_df, runs = experiment.run_grid(trunk, trunk_key, data, p, cache, device)
summary = tables.summarize(runs_df)
depth_tab = pd.concat([tables.depth_table(summary, DATASET), context_rows("face", "depth_accuracy")], ignore_index=True)
rep.table("accuracy_by_depth", depth_tab, data=DATA,
          note="Paper rows: the paper's per-depth accuracies are not known (not transcribed).")

# %%
fig = figures.plot_depth_curves(summary)
rep.figure("accuracy_vs_depth", fig, data=DATA)

# %% [markdown]
# **The claims.** Declared in `configs/face_attribute_sharing/default.yaml` (`claims:`, `claim_tests:`) before any
# result, decided in `papers/face/claims.py` by the project's one test: a paired bootstrap over test people of the
# per-image score (1/0 correct; age: its bin), the fine-tuning seeds pooled.
#
# - *Which earlier depth.* The attribute-test people are split once, by a declared seed, into a **selection half**
#   and a **decision half**. Each attribute's "earlier depth" is the depth before the last with the best accuracy on
#   the selection half; every claim is decided on the decision half only, so no depth is chosen on the images that
#   judge it. (The table and figure above show all test people.)
# - *The paper's claim, one row per attribute* ("Age and emotion improve when fine-tuned from earlier layers
#   onward"): fine-tuning from the earlier depth must beat head-only fine-tuning, **and** the capacity control must
#   pass the same test: the same small probe at its earlier depth (chosen the same way) against the probe at the
#   last depth. Branching earlier also trains more layers; if the equal-capacity probe gains too, the gain is not
#   only that extra capacity (the right panel above; the table below sets fine-tuning beside the probe with the
#   trainable parameters of each).
# - *Ours, not the paper's* (`source: extension`): gender and ethnicity "gain little", read as head only within
#   0.05 accuracy of the earlier depth (the interval of head only minus earlier depth lies above -0.05).
#
# At the smoke preset (the parameters cell's default) these checks run but draw no verdict ("not evaluated (smoke
# size)"); the committed default run's verdicts are in `results/face_attribute_sharing/claims.md`.

# %%
halves = claims.halves_of(data.test, p)
decided = claims.check_depth_claims(rep, runs, data.test, halves, p)
print("\n".join(claims.in_words(decided)))
control = tables.control_summary(runs_df)
show(control)

# %% [markdown]
# The lines above say per attribute whether its claim holds and, for the paper's two claims, whether the capacity
# control held. A paper claim whose capacity control fails is **not reproduced**, even where fine-tuning alone gains:
# the gain of the earlier branch is then not shown to be more than its extra trainable layers. In the committed
# default run (`results/face_attribute_sharing/claims.md`) this is the age claim's fate: the probe does no better at
# an earlier depth than at the last, and fine-tuning's own gain on the decision half is within noise.

# %% [markdown]
# ### Why head-only emotion sits at chance
#
# Head-only fine-tuning reads the last stage's features **globally average-pooled**: at 40 px the last stage is a
# 5x5 map, and pooling it away discards where on the face a feature fired, which is what the synthetic world's
# emotion is (mouth, brows, eyes). To tell a signal the frozen features lack from one the short head-only training
# missed, a linear classifier is fitted to convergence on the frozen features after stages 3 and 4, pooled globally
# (what the head-only branch reads) and to a 3x3 grid (what the probe keeps), with gender beside it.

# %%
readout = experiment.readout_diagnostic(trunk, trunk_key, data, cache, device=device)
chance = {a: 1 / len(data.vocab[a]) for a in ATTRIBUTES}
rep.table("linear_readout", tables.readout_table(readout, DATASET, chance), data=DATA,
          note="Logistic regression (L-BFGS, C=1, standardised features) on frozen identity-trunk features, fitted on "
          "the attribute-training images, scored on the test images.")
print(tables.readout_finding(readout, summary))

# %% [markdown]
# What this means for the comparison (read the line above and the table): where the read-out of the globally pooled
# features stays close to chance while the 3x3-grid read-out of the same features does not, the last stage still
# carries emotion, but in its spatial layout, which the head-only branch's global pooling discards; where head-only
# fine-tuning stays below the converged read-out of the same pooled features, its short training adds to it. Either
# way "head only" measures *pooled* last-stage features, and an earlier branch's gain mixes two things: less identity
# invariance, and trainable layers that can turn layout into channels before the pooling. The capacity control
# separates them: the probe keeps a 3x3 layout at every depth, so its gain from an earlier depth is not the pooling's
# doing; that is why the paper's claims are decided with it. (The design is kept: head only is the paper's baseline,
# one new layer on the penultimate identity features, and the control is what answers the confound.)

# %% [markdown]
# **How firm these are.** The default preset is cut to fit about 5 minutes on 2 cores (40 px input, 1000 trunk steps,
# 200 fine-tuning steps, 3 fine-tuning seeds), and each claim is decided on half of the 150 test people: the
# interval in each row of the claims table says how firm it is. A larger setting can be run with e.g.
# `./run_all.sh --only face_attribute_sharing --set model.input_size=48 --set trunk.steps=1200
# --set finetune.steps=300` (no such run is committed).

# %% [markdown]
# ## 3. The sharing pattern within 1 GFLOP
#
# A pattern gives each attribute a branch depth. One forward pass runs the shared trunk up to the deepest branch
# point once, then each attribute's private stages and head. Costs are counted per stage with
# `torch.utils.flop_counter`, as multiply-adds (MACs) and FLOPs (2 per multiply-add), on **the network whose
# accuracies are reported** (this preset's trunk at its own input size); the budget applies to the convention in
# `p.sharing.convention`. At the default preset's 40 px every pattern fits 1 GFLOP, so the budget does not bind
# here; the paper's budget is checked on the paper preset's network below, as a check that can fail. A pattern's
# accuracy is the mean over attributes of the per-depth accuracies above (mean over seeds). The pattern built below is the most accurate
# within the budget **on the selection half** of the test people (so that the claim on it is decided on other
# people); the table shows every pattern's accuracy on all test people.

# %%
S = p.model.input_size
n_classes = {a: len(data.vocab[a]) for a in ATTRIBUTES}
costs = sharing.part_costs(experiment.net_config(p), n_classes, S)
budget_cfg, budget_preset = sharing.budget_network(p)
budget_costs = sharing.part_costs(budget_cfg, n_classes, budget_cfg.input_size)
BUDGET_NET = f"the {budget_preset} preset's network (widths {list(budget_cfg.widths)}) at {budget_cfg.input_size} px"
patterns = sharing.with_budget_costs(sharing.enumerate_patterns(sharing.mean_accuracy_table(summary), costs), budget_costs)
front = sharing.pareto_front(patterns, p.sharing.convention)
on_selection = sharing.enumerate_patterns(claims.selection_accuracy(runs, data.test, halves, p), costs)
chosen_name = sharing.choose_pattern(on_selection, p.sharing.budget, p.sharing.convention)["pattern"]
chosen = patterns[patterns.pattern == chosen_name].iloc[0]
named = sharing.named_patterns(patterns, summary, p)
shown = tables.patterns_to_show(patterns, front, chosen, named)
print("chosen:", chosen["pattern"], f"{chosen['flops'] / 1e9:.3f} GFLOPs = {chosen['macs'] / 1e9:.3f} GMACs")
rep.table("sharing_patterns", pd.concat([tables.pattern_rows(shown, DATASET, f"this preset's network at {S} px", BUDGET_NET),
                                          context_rows("face", "sharing_patterns")], ignore_index=True),
          data=DATA, note=f"Costs on this preset's network at {S} px (cost_at), and on {BUDGET_NET}. Shown: the Pareto front, the chosen pattern (the most accurate "
          "within the budget on the selection half of the test people) and the baselines; accuracies on all test people.")

# %%
fig = figures.plot_pareto(patterns, front, chosen, p.sharing.budget, p.sharing.convention, marks=named)
rep.figure("flops_vs_accuracy", fig, data=DATA)

# %% [markdown]
# ### The chosen pattern as one network
#
# The branches fine-tuned with the first seed are assembled into one `MultiHeadFaceNet`; a single forward
# pass returns all four predictions. Its cost is counted on the built network (and must equal the search's sum).
# Two claims are checked on it after the table:
#
# - the paper's "the final network needs only about 1 GFLOP for all predictions", not an "A beats B" but a cost,
#   declared in advance so that it can fail: the paper's network and pattern are unknown, so the pattern our
#   procedure picks **on accuracy alone** (the most accurate on the selection half, without the budget filter) is
#   costed on **the paper preset's network at its 112 px input** (counting needs no training), and must come within
#   1 GFLOP x (1 + 0.25) ("about"; tolerance in `checks.one_gflop`), FLOPs counted as 2 per multiply-add (MACs
#   beside them). The network built here is costed too (the table above), at this preset's own input size;
# - ours (`source: extension`): the chosen pattern "loses little accuracy against one network per attribute", read
#   as within 0.02 of it, decided by the same bootstrap on the decision half (per image: the mean over the four
#   attributes of 1/0 correct).
#
# At the smoke preset they draw no verdict ("not evaluated (smoke size)"); the committed default run's verdicts are
# in `results/face_attribute_sharing/claims.md`.

# %%
net = experiment.build_multihead(trunk, sharing.pattern_of(chosen), runs, data, p.seeds[0])
one_pass = experiment.evaluate_multihead(net, data, device)
counted = count_flops(net, torch.zeros(1, 3, S, S))
assert counted["flops"] == chosen["flops"], "the search's cost and the built network's cost disagree"
baselines = tables.baselines_table(summary, patterns, chosen, named, one_pass, counted, DATASET, p)
rep.table("chosen_vs_baselines", pd.concat([baselines, context_rows("face", "context")], ignore_index=True),
          data=DATA, note=f"Costs at {S} px. Context rows are other systems' published numbers, not this paper's.")

# %%
unbudgeted = sharing.pattern_of(sharing.choose_without_budget(on_selection, p.sharing.convention))
claims.check_budget(rep, unbudgeted, sharing.pattern_cost(unbudgeted, budget_costs), BUDGET_NET, p)
claims.check_loss_vs_separate(rep, runs, data.test, halves, sharing.pattern_of(chosen), p)

# %%
fig = figures.plot_confusions({a: s["pred"] for a, s in one_pass.items()}, data.test, data.vocab)
rep.figure("confusion_matrices", fig, data=DATA)
idx = figures.prediction_examples(data, p.figures.n_prediction_faces)
fig = figures.plot_predictions(data.test.images.get(idx), {a: s["pred"] for a, s in one_pass.items()}, data.test, data.vocab, idx)
rep.figure("predictions_grid", fig, data=DATA)

# %% [markdown]
# ## Summary
#
# This run's claims table (also written as `claims.md` into this run's results folder). A claim that does not
# reproduce is reported with its numbers, not tuned away. At the smoke preset the verdicts read "not evaluated
# (smoke size)"; the committed default run's are in `results/face_attribute_sharing/claims.md`. The images/s of
# the multi-head network against four separate networks is printed by `python -m visualsearch.bench face`.

# %%
rep.claims_table()
