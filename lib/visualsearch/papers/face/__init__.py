"""The face paper: Baumgartner & Culpepper, *Deep Architectures for Face Attributes* (arXiv 1609.09018).

notebooks/face_attribute_sharing.ipynb reproduces its experiment: an identity network is fine-tuned for age,
gender, ethnicity and emotion from each branch depth (with a capacity control and from-scratch baselines),
age and emotion gain from branching earlier, and one sharing pattern (a branch depth per attribute) gives all
four predictions within about 1 GFLOP.

Modules:
- data.py: `load_data(p) -> FaceData` (the synthetic faces world or the real identity folders, FairFace and
  FER2013 under p.data_root), three splits of disjoint people, each an in-memory ImageStore beside its labels;
  ATTRIBUTES.
- experiment.py: `result_cache()`, the identity trunk, the cached (and forked, resumable) grid of fine-tuning
  runs, scoring, the chosen pattern built and evaluated as one multi-head network.
- sharing.py: sharing patterns: their costs (FLOPs counted on the models), enumeration, Pareto front, choice.
- tables.py: the notebook's tables (summary over seeds, depth table, patterns, baselines, identity, control).
- figures.py: the notebook's figures (no models, no training).
- claims.py: the depth claims, the budget and the accuracy-loss checks (`rep.check`).
"""
