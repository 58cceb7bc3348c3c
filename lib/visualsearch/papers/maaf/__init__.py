"""Dodds, Culpepper, Herdade, Zhang and Boakye, *Modality-Agnostic Attention Fusion for visual search with text
feedback* (arXiv 2007.00145): image tokens (every position of ResNet layer3 and layer4) and word tokens through
shared Transformer blocks, pooled into one vector; catalog images through the same blocks, image tokens only.

The notebook `maaf_ablations.ipynb` reproduces MAAF against its baselines (TIRG, concatenation, image-only, ...)
on Fashion IQ, CSS, Fashion200k, Birds-to-Words and Spot-the-Diff (real layouts under a data root, or synthetic
worlds written in those formats), its ablations on Fashion IQ, attention maps and retrieval examples.

One experiment is:

    data (synthetic worlds or the five real datasets) -> SplitInputs per split (an ImageStore of square crops)
    -> [pretrain a ResNet on product attributes: the embedded stand-in for ImageNet]
    -> [frozen backbone: its stage maps computed once per process]
    -> train a composition model on (reference, text, target) batches (UniformBatches, train.train)
    -> embed the gallery and the composed queries (evaluate.embed) -> evaluate.search, reference excluded
    -> Recall@K tables (and hit@k per query), ablations, attention maps, retrieval examples
    -> the declared claims (configs/maaf_ablations/default.yaml `claims:`), each decided by
       visualsearch.claims.decide on per-query scores pooled over `claim_seeds` training seeds.

Modules:

- `data.py`: `load_data(p) -> MAAFData` (a mapping of dataset name to `PreparedDataset`: training groups and
  evaluation splits as `SplitInputs`, vocabulary, description, fingerprint, skips), `data_summary`, the square
  crop into an `ImageStore` (`load_store`), `normalize_pixels` and the authors' `augment`.
- `experiment.py`: the computation: `result_cache`, `FrozenMaps`, batches and steps, `evaluate` and
  `evaluate_per_query` (`per_query_hits`), `run_experiment` (cached, resumable), the process-pool scheduler
  `run_all`, the notebook's plan (`backbone_weights_file`, `plan_runs` with the claims' seeds, `seed_results`,
  `ablation_results`, `query_references`, `trainable_parameters`), and what figures and claims need from a trained model (`word_attention`,
  `retrieval_examples`, `place_attention_items`, `place_attention`).
- `pretrain.py`: the backbone pretraining on product attributes (`pretrain_trunk`, its own resumable loop).
- `tables.py`: method names, Fashion IQ rows, recall rows (with trainable parameters), ablation rows, `fiq_score`,
  the per-seed claim scores, every claim comparison (`comparison_rows`) and place-attention rows.
- `figures.py`: attention maps, retrieval examples, training curves (from arrays and results; no model).
- `claims.py`: the declared claims decided (MAAF against the baselines per dataset; words and the places they
  name), which runs they need seeded (`seeded_runs`).
"""
