"""Exact retrieval and Recall@K, with memory bounded by chunk sizes.

Why: every paper here is evaluated by exact nearest neighbours under cosine similarity (dot products of
unit vectors). A catalog of 100k items against 10k queries is a 4 GB score matrix, so scores are computed
one block of queries x one block of gallery at a time and only a running top-k is kept (as DINO's k-NN
does). Ties are broken by the lower gallery index, so results do not depend on the chunk sizes or the
backend. FAISS (IndexFlatIP) is offered as an optional backend and must agree with the exact one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch



@dataclass
class TopK:
    scores: torch.Tensor   # [Q, k] similarity of each retrieved item, best first
    indices: torch.Tensor  # [Q, k] gallery index of each retrieved item


def _select(scores: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `scores` (candidates with gallery indices `index`, same shape), ordered by score
    descending then gallery index ascending. Exact under ties: one extra candidate tells whether a tie
    straddles the cut; such rows, and rows with ties inside the top-k, are resolved with a stable sort."""
    k = min(k, scores.shape[1])
    extra = 1 if scores.shape[1] > k else 0
    top_s, top_pos = scores.topk(k + extra, dim=1)
    tied_rows = (top_s[:, 1:] == top_s[:, :-1]).any(1) if k + extra > 1 else torch.zeros(len(scores), dtype=torch.bool)
    top_s, top_i = top_s[:, :k], index.gather(1, top_pos[:, :k])
    if tied_rows.any():
        rows = tied_rows.nonzero().squeeze(1)
        s, i = scores[rows], index[rows]
        order = i.argsort(dim=1, stable=True)              # by gallery index first ...
        s, i = s.gather(1, order), i.gather(1, order)
        order = (-s).argsort(dim=1, stable=True)[:, :k]     # ... then by score, stable keeps index order
        top_s[rows], top_i[rows] = s.gather(1, order), i.gather(1, order)
    return top_s, top_i


def retrieve(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude=None, chunk_size: int = 1024,
             gallery_chunk_size: int = 8192, backend: str = "torch") -> TopK:
    """Top-k gallery items by dot product for every query.

    exclude: None; "self" (queries are the gallery, query i must not retrieve item i); or a LongTensor [Q]
    holding one gallery index to drop per query (-1 for none), e.g. the reference image in Fashion IQ.
    k is capped at the number of retrievable items. Memory is O(chunk_size x gallery_chunk_size).
    """
    queries, gallery = queries.float(), gallery.float()
    nq, ng = queries.shape[0], gallery.shape[0]
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but gallery has {gallery.shape[1]}")
    if isinstance(exclude, str):
        if exclude != "self":
            raise ValueError(f"exclude must be None, 'self' or a tensor of gallery indices, got '{exclude}'")
        if nq != ng:
            raise ValueError("exclude='self' needs queries and gallery of the same size")
        exclude = torch.arange(nq)
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long)
        if exclude.shape != (nq,):
            raise ValueError(f"exclude must have shape [{nq}], got {tuple(exclude.shape)}")
    k = min(k, ng - (1 if exclude is not None and (exclude >= 0).any() else 0))
    if k <= 0:
        raise ValueError("nothing to retrieve: the gallery is empty")
    if backend == "faiss":
        return _retrieve_faiss(queries, gallery, k, exclude)
    if backend != "torch":
        raise ValueError(f"unknown backend '{backend}' (valid: torch, faiss)")

    out_s = torch.empty(nq, k)
    out_i = torch.empty(nq, k, dtype=torch.long)
    for q0 in range(0, nq, chunk_size):
        q = queries[q0:q0 + chunk_size]
        best_s = best_i = None
        for g0 in range(0, ng, gallery_chunk_size):
            g = gallery[g0:g0 + gallery_chunk_size]
            s = q @ g.T
            if exclude is not None:
                ex = exclude[q0:q0 + chunk_size] - g0
                hit = (ex >= 0) & (ex < g.shape[0])
                if hit.any():
                    s[hit.nonzero().squeeze(1), ex[hit]] = float("-inf")
            cs, ci = _select(s, torch.arange(g0, g0 + g.shape[0]).expand_as(s), k)
            if best_s is None:
                best_s, best_i = cs, ci
            else:
                best_s, best_i = _select(torch.cat([best_s, cs], 1), torch.cat([best_i, ci], 1), k)
        out_s[q0:q0 + chunk_size], out_i[q0:q0 + chunk_size] = best_s, best_i
    return TopK(out_s, out_i)


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
    return TopK(*_select(s, i, k))


def recall_at_k(indices: torch.Tensor, query_labels, gallery_labels, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries with at least one relevant item (gallery label == query label) in the top k.

    ks larger than the number of retrieved columns are evaluated on all retrieved items (the caller states
    the cap in its table).
    """
    query_labels = torch.as_tensor(query_labels)
    gallery_labels = torch.as_tensor(gallery_labels)
    hits = gallery_labels[indices] == query_labels.unsqueeze(1)
    first = torch.where(hits.any(1), hits.float().argmax(1), torch.full_like(query_labels, hits.shape[1]))
    return {int(k): float((first < k).float().mean()) for k in ks}


def embed(fn: Callable[[object], torch.Tensor], batches: Iterable, progress: bool = False,
          desc: str = "embedding") -> torch.Tensor:
    """Concatenate `fn(batch)` over batches under no_grad, on CPU; a progress bar when asked."""
    from tqdm.auto import tqdm

    out = []
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
            out.append(fn(batch).detach().float().cpu())
    return torch.cat(out) if out else torch.empty(0)
