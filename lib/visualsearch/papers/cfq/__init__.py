"""Dodds, Culpepper and Srivastava, *Training and challenging models for text-guided fashion image retrieval*
(arXiv 2204.11004): the home of the `cfq_evaluation` notebook.

The notebook reproduces the paper's experiment grid (CLIP VA, RAF, AF, TIRG and a never-pretrained CLIP VA; with
and without iMFQ weak supervision) scored on Fashion IQ-style recall, iMaterialist-style ROC-AUC / mAP and
Challenging Fashion Queries (CFQ), three of the paper's four claims (declared in the notebook's config, decided by
the project's one test on several training seeds), and a data-limited sweep beyond the paper.

Modules:
- `data`: `load_data(p) -> CFQPaperData`: every dataset of the grid read (real layouts under `p.data_root`) or
  drawn (synthetic worlds), its images registered once in an `ImageIndex` that builds the `ImageStore`; the
  settings check (`require_settings`), the pretraining captions (`attribute_caption`), `PairSet`.
- `experiment`: `result_cache()`, `CFQExperiment` (the dual encoders, pretraining, the cached and resumable
  runs at any training seed and their evaluation, per-item scores `PER_ITEM` included), the batch and step
  functions.
- `tables`: results -> the notebook's tables (`grid_table`, `cfq_threshold_table`, `data_limited_table`,
  `pretraining_margins`, `seed_table`); the run labels and headline numbers.
- `figures`: the judgment histogram, Figure 1's examples, training curves, the data-limited sweep.
- `claims`: the declared claims decided on this preset's per-item scores (`decide_claims`: each metric of a
  claim by `visualsearch.claims.decide`, all required).

The CFQ scoring itself is `visualsearch.cfq_metrics`; the readers are `visualsearch.data.cfq`,
`visualsearch.data.imaterialist` and `visualsearch.data.text_feedback`; the models `visualsearch.models.clip`.
"""
