"""Exact retrieval and Recall@K, with memory bounded by chunk sizes.

Why: every paper here is evaluated by exact nearest neighbours under cosine similarity (dot products of
unit vectors). A catalog of 100k items against 10k queries is a 4 GB score matrix, so scores are computed
one block of queries x one block of gallery at a time (a BLAS matrix product) and only a running top-k is
kept. The top-k is kept the way FAISS keeps it: one compiled pass over each score block in which an item
costs a single comparison with its query's current k-th score, and only the rare item that beats it is
inserted. A torch.topk per block (or any chain of tensor operations) reads every block several times and
cost about a third of the matrix products; this pass costs about a tenth. Items arrive in gallery order and
a newcomer is placed after the equal scores already held, so ties go to the lower gallery index and the
result does not depend on the chunk sizes or the backend. FAISS (IndexFlatIP) is offered as an optional
backend and must agree with the exact one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numba
import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class TopK:
    scores: torch.Tensor   # [Q, k] similarity of each retrieved item, best first
    indices: torch.Tensor  # [Q, k] gallery index of each retrieved item


@numba.njit(cache=True, nogil=True)
def _merge_row(scores, first_index, top_scores, top_indices, row):  # pragma: no cover - compiled
    """Fold row `row` of a score block (gallery items first_index...) into that row's running top
    (top_scores [rows, k] best first, -inf where empty). An item enters only if it beats the k-th score
    strictly, and goes after the equal scores already held: the lower gallery index wins a tie."""
    k = top_scores.shape[1]
    floor = top_scores[row, k - 1]
    for col in range(scores.shape[1]):
        value = scores[row, col]
        if value > floor:
            pos = k - 1
            while pos > 0 and top_scores[row, pos - 1] < value:
                top_scores[row, pos] = top_scores[row, pos - 1]
                top_indices[row, pos] = top_indices[row, pos - 1]
                pos -= 1
            top_scores[row, pos] = value
            top_indices[row, pos] = first_index + col
            floor = top_scores[row, k - 1]


@numba.njit(parallel=True, cache=True, nogil=True)
def _merge_block_parallel(scores, first_index, top_scores, top_indices):  # pragma: no cover - compiled
    for row in numba.prange(scores.shape[0]):
        _merge_row(scores, first_index, top_scores, top_indices, row)


@numba.njit(cache=True, nogil=True)
def _merge_block_serial(scores, first_index, top_scores, top_indices):  # pragma: no cover - compiled
    for row in range(scores.shape[0]):
        _merge_row(scores, first_index, top_scores, top_indices, row)


_PARALLEL_PID: list = [None]  # the process that started numba's thread pool (GNU OpenMP on Linux)


def _merge_block():
    """The row-parallel merge, or the serial one in a process forked after its parent started the parallel
    one's thread pool: a GNU OpenMP pool does not survive fork, and the child's first parallel merge would
    deadlock (face fine-tuning forks workers after the parent has retrieved)."""
    if _PARALLEL_PID[0] is None:
        _PARALLEL_PID[0] = os.getpid()
    if _PARALLEL_PID[0] != os.getpid():
        return _merge_block_serial
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return _merge_block_parallel


def retrieve(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude=None, chunk_size: int = 4096,
             gallery_chunk_size: int = 1024, backend: str = "torch") -> TopK:
    """Top-k gallery items by dot product for every query, ties broken by the lower gallery index.

    exclude: None; "self" (queries are the gallery, query i must not retrieve item i); or a LongTensor [Q]
    holding one gallery index to drop per query (-1 for none), e.g. the reference image in Fashion IQ.
    k is capped at the number of retrievable items. It runs on the CPU (embeddings on a GPU are copied over,
    as FAISS's CPU index would need). Memory is O(chunk_size x gallery_chunk_size) (16 MB at
    the defaults, whose 1024 gallery rows x 512 dims stay in cache during the product). "Equal" scores
    are equal float32 scores as computed: a gallery vector duplicated in two gallery blocks can score one ulp
    apart there (BLAS sums in a different order for blocks of other widths), and the pair is then ordered by
    those scores.
    """
    queries, gallery = queries.detach().float().cpu(), gallery.detach().float().cpu()  # GPU embeddings: copied
    nq, ng = queries.shape[0], gallery.shape[0]
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but gallery has {gallery.shape[1]}")
    for name, x in (("queries", queries), ("gallery", gallery)):
        row_sums = x.sum(1)  # one pass, no copy of x: a NaN or infinity in a row makes its sum non-finite
        if not torch.isfinite(row_sums).all():
            bad = (~torch.isfinite(row_sums)).nonzero().squeeze(1)
            raise ValueError(f"{name} hold NaN or infinite values in {bad.numel()} rows (first: {bad[:5].tolist()})")
    if isinstance(exclude, str):
        if exclude != "self":
            raise ValueError(f"exclude must be None, 'self' or a tensor of gallery indices, got '{exclude}'")
        if nq != ng:
            raise ValueError("exclude='self' needs queries and gallery of the same size")
        exclude = torch.arange(nq)
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long).cpu()
        if exclude.shape != (nq,):
            raise ValueError(f"exclude must have shape [{nq}], got {tuple(exclude.shape)}")
    k = min(k, ng - (1 if exclude is not None and (exclude >= 0).any() else 0))
    if k <= 0:
        raise ValueError("nothing to retrieve: the gallery is empty")
    if backend == "faiss":
        return _retrieve_faiss(queries, gallery, k, exclude)
    if backend != "torch":
        raise ValueError(f"unknown backend '{backend}' (valid: torch, faiss)")

    queries, gallery = queries.contiguous(), gallery.contiguous()
    buf = torch.empty(min(chunk_size, nq) * min(gallery_chunk_size, ng))  # reused: no allocation per block
    top_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    top_indices = np.full((nq, k), -1, dtype=np.int64)

    def scores_of(q0: int, q1: int, g0: int, g1: int) -> np.ndarray:
        s = torch.matmul(queries[q0:q1], gallery[g0:g1].T, out=buf[:(q1 - q0) * (g1 - g0)].view(q1 - q0, g1 - g0))
        if exclude is not None:
            ex = exclude[q0:q1] - g0
            hit = (ex >= 0) & (ex < g1 - g0)
            if hit.any():
                s[hit.nonzero().squeeze(1), ex[hit]] = float("-inf")  # never beats a floor, not even -inf
        return s.numpy()

    torch_threads = torch.get_num_threads()
    merge = _merge_block()
    try:
        for q0 in range(0, nq, chunk_size):
            q1 = min(q0 + chunk_size, nq)
            for g0 in range(0, ng, gallery_chunk_size):
                merge(scores_of(q0, q1, g0, min(g0 + gallery_chunk_size, ng)), g0, top_scores[q0:q1],
                      top_indices[q0:q1])
    finally:
        # numba's first parallel merge starts the OpenMP pool that torch shares, which resets torch's thread
        # count to every core: a training after an evaluation would silently run on other threads than set
        torch.set_num_threads(torch_threads)
    return TopK(torch.from_numpy(top_scores), torch.from_numpy(top_indices))


def _retrieve_faiss(queries, gallery, k, exclude) -> TopK:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ImportError("backend='faiss' needs the faiss-cpu package") from e
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.contiguous().numpy())
    extra = 1 if exclude is not None else 0
    s, i = index.search(queries.contiguous().numpy(), k + extra)
    s, i = torch.from_numpy(s), torch.from_numpy(i).long()
    if exclude is not None:
        keep = i != exclude.unsqueeze(1)
        # drop the excluded item where present, else the last one; every row keeps exactly k
        drop_last = keep.all(1)
        keep[drop_last, -1] = False
        s, i = s[keep].view(-1, k), i[keep].view(-1, k)
    ts, pos = _stable_top_pairs(s, i, k)
    return TopK(ts, pos)


def _stable_top_pairs(s: torch.Tensor, i: torch.Tensor, k: int):
    """Order FAISS's candidates by score descending, then gallery index ascending."""
    order = i.argsort(dim=1, stable=True)
    s, i = s.gather(1, order), i.gather(1, order)
    order = (-s).argsort(dim=1, stable=True)[:, :k]
    return s.gather(1, order), i.gather(1, order)


def recall_at_k(indices: torch.Tensor, query_labels, gallery_labels, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with at least one relevant item (gallery label == query label) in the top k.

    ks larger than the number of retrieved columns are evaluated on all retrieved items (the caller states
    the cap in its table): a query with no relevant item among them is a miss at every k.
    """
    query_labels = torch.as_tensor(query_labels)
    gallery_labels = torch.as_tensor(gallery_labels)
    hits = gallery_labels[indices] == query_labels.unsqueeze(1)
    return {int(k): float(hits[:, :k].any(1).float().mean()) for k in ks}


def embed(fn: Callable[[torch.Tensor], torch.Tensor], index, batch_size: int = 256, normalize: bool = True,
          progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """The one embedding loop: `fn(chunk)` for consecutive chunks of `index` (a LongTensor of item indices, or
    an int n for 0..n-1), under no_grad, as float rows on the CPU, each L2-normalised unless `normalize` is
    False; [len(index), D]. `fn` turns item indices into embeddings (read the images, run the model)."""
    from .progress import bar

    index = torch.arange(index) if isinstance(index, int) else torch.as_tensor(index, dtype=torch.long).reshape(-1)
    out = []
    with torch.no_grad():
        for start in bar(range(0, len(index), batch_size), desc=desc, disable=not progress, leave=False):
            e = fn(index[start:start + batch_size]).float()
            out.append((F.normalize(e, dim=-1) if normalize else e).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


@dataclass
class Retrieval:
    """The one result type of a retrieval evaluation: what `search` computed."""

    recall: dict            # k -> Recall@k, a fraction of the queries
    indices: torch.Tensor   # [Q, kmax] gallery indices, best first
    scores: torch.Tensor    # [Q, kmax] their similarities
    k_cap: int              # the largest k that could be evaluated (items retrievable per query)

    def percent(self) -> dict:
        """{"R@k": Recall@k in percent} (how the MAAF and CFQ papers print recall)."""
        return {f"R@{k}": 100 * v for k, v in self.recall.items()}


def search(query_emb: torch.Tensor, gallery_emb: torch.Tensor, query_labels, gallery_labels, ks: Sequence[int],
           exclude=None) -> Retrieval:
    """Exact retrieval of every query (see `retrieve`, `exclude` included) and its Recall@k for each k in `ks`.

    A query is a hit at k when a gallery item of its label is among its first k results. ks above the items
    retrievable per query (the gallery size, less one when an item is excluded per query) are evaluated at
    that cap, `k_cap`, which the caller states in its table."""
    k_cap = len(gallery_emb) - (0 if exclude is None else 1)
    kmax = min(max(ks), k_cap)
    top = retrieve(query_emb, gallery_emb, kmax, exclude=exclude)
    rec = recall_at_k(top.indices, query_labels, gallery_labels, [min(k, k_cap) for k in ks])
    return Retrieval({k: rec[min(k, k_cap)] for k in ks}, top.indices, top.scores, k_cap)
