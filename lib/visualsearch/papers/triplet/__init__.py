"""Dodds, Nguyen, Herdade, Culpepper, Kae and Garrigues, *Learning Embeddings for Product Visual Search with
Triplet Loss and Online Sampling* (arXiv 1810.04652): a ResNet trunk, one linear layer and an L2 norm trained
with a triplet loss whose negatives are mined inside pair batches.

The notebook `triplet_product_search.ipynb` checks the paper's two claims, each by a proxy on synthetic data
(declared in configs/triplet_product_search/default.yaml, `claims:`): online batch-hard negatives beat random
triplets and off-the-shelf features (an In-shop style comparison of sampling methods), and batches drawn from one
product category (p=0.8) beat mixed ones on SOP (within a sweep of the single-category probability p). The runs
that enter a claim train at several seeds (`seeds`).

One experiment is:

    data (synthetic products world or the real SOP / In-shop / Consumer-to-Shop) -> ProductImages per split
    -> [pretrain a trunk on attribute labels: the embedded stand-in for ImageNet]
    -> train an EmbeddingNet with a pair sampler + a triplet loss (train.train, exact resume)
    -> embed query and gallery (evaluate.embed) -> exact cosine retrieval (evaluate.search) -> Recall@K, figures.

Modules:

- `data.py`: `load_data(p) -> TripletData` (the five splits as `ProductImages`: an `ImageStore` with product
  labels, categories and item ids beside it), `data_summary`, `attribute_targets`, `kept_images_digest`,
  `lookalike_groups_of`.
- `experiment.py`: the computation: `result_cache`, `pretrain_trunk`, `RunConfig`, `build_model`,
  `train_embedding`, `embed`, the cached runs (`trunk_weights`, `off_the_shelf`, `trained_run`),
  `evaluate_run`, the claims' runs at every seed (`training_seeds`, `claim_run`, `seeded_retrievals`), and every
  training of the notebook at once in worker processes (`notebook_runs`, `prefetch_runs`, keyed by `run_key`).
- `analysis.py`: measurements of retrieval results and embeddings (no model): recall curves, per-category
  recall, top-1 category confusion, similarity samples, the sources of wrong top-1 results.
- `tables.py`: `METHOD_LABELS`, `recall_table`, `sop_label`, `method_label`, the per-seed tables behind the
  claims (`seed_table`, `difference_table`).
- `figures.py`: the notebook's figures (`fig_*`), from arrays, retrieval results and image stores.
- `claims.py`: the declared claims decided on a run (`decide_claims`: visualsearch.claims.decide on per-query
  top-1 hits pooled over seeds, clustered by product) and the per-seed tables behind them (`seed_tables`).
"""
