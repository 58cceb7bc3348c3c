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


GROUP = 16  # columns per group in the two-level top-k of a block (see _block_top)


def _block_top(scores: torch.Tensor, m: int, floor: torch.Tensor | None = None):
    """The m best (score, column) of each row of one score block, in no particular tie order; with `floor`
    ([rows, 1], each row's current m-th best score from earlier blocks) only items that can still enter
    that top m are guaranteed, and (None, None) means none can.

    Wide blocks are cut into groups of GROUP columns; a group whose maximum is not among the m largest
    group maxima cannot hold any of the m best items (m other groups each hold a larger one), and a group
    whose maximum is below the floor cannot either. So the top is taken over the few surviving groups only:
    one max-pool pass over the block instead of a top-k over every column.
    """
    q, g = scores.shape
    m = min(m, g)
    if g % GROUP or g < 4 * m * GROUP:
        return scores.topk(m, dim=1)
    group_max = torch.nn.functional.max_pool1d(scores.unsqueeze(1), GROUP).squeeze(1)   # [q, g / GROUP]
    n = m
    if floor is not None:
        n = min(m, int((group_max >= floor).sum(1).max()))  # groups that can still matter, in the worst row
        if n == 0:
            return None, None
    groups = group_max.topk(n, dim=1).indices                                           # [q, n]
    cols = (groups.unsqueeze(2) * GROUP + torch.arange(GROUP)).view(q, -1)              # [q, n * GROUP]
    top_s, pos = scores.gather(1, cols).topk(min(m, n * GROUP), dim=1)
    return top_s, cols.gather(1, pos)


def _stable_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by score descending, ties by lower column: the exact rule, used for rows with ties."""
    order = (-scores).argsort(dim=1, stable=True)[:, :k]
    return scores.gather(1, order), order


def retrieve(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude=None, chunk_size: int = 512,
             gallery_chunk_size: int = 16384, backend: str = "torch") -> TopK:
    """Top-k gallery items by dot product for every query.

    exclude: None; "self" (queries are the gallery, query i must not retrieve item i); or a LongTensor [Q]
    holding one gallery index to drop per query (-1 for none), e.g. the reference image in Fashion IQ.
    k is capped at the number of retrievable items. Memory is O(chunk_size x gallery_chunk_size).
    Ties are broken by the lower gallery index: every block contributes its k+1 best; where the k+1 best
    of a query hold equal scores, that query's row is recomputed and stably sorted. "Equal" means equal float32
    scores as computed: a gallery vector duplicated in two gallery blocks can score one ulp apart there (BLAS
    sums in a different order for blocks of other widths), and the pair is then ordered by those scores.
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

    buf = torch.empty(min(chunk_size, nq) * min(gallery_chunk_size, ng))  # reused: no allocation per block

    def scores_of(q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        if (q1 - q0) * (g1 - g0) <= buf.numel():
            s = torch.matmul(queries[q0:q1], gallery[g0:g1].T, out=buf[:(q1 - q0) * (g1 - g0)].view(q1 - q0, g1 - g0))
        else:
            s = queries[q0:q1] @ gallery[g0:g1].T
        if exclude is not None:
            ex = exclude[q0:q1] - g0
            hit = (ex >= 0) & (ex < g1 - g0)
            if hit.any():
                s[hit.nonzero().squeeze(1), ex[hit]] = float("-inf")
        return s

    m = min(k + 1, ng)  # one extra candidate reveals a tie at the cut
    out_s = torch.empty(nq, k)
    out_i = torch.empty(nq, k, dtype=torch.long)
    for q0 in range(0, nq, chunk_size):
        q1 = min(q0 + chunk_size, nq)
        s = i = None  # the m best so far of each query of the chunk
        for g0 in range(0, ng, gallery_chunk_size):
            g1 = min(g0 + gallery_chunk_size, ng)
            floor = s[:, -1:] if s is not None and s.shape[1] == m else None
            bs, cols = _block_top(scores_of(q0, q1, g0, g1), m, floor)
            if bs is None:  # nothing in this block reaches the m best so far
                continue
            if s is None:
                s, i = bs, cols + g0
            else:
                both_s, both_i = torch.cat([s, bs], 1), torch.cat([i, cols + g0], 1)
                s, pos = both_s.topk(min(m, both_s.shape[1]), dim=1)
                i = both_i.gather(1, pos)
        tied = (s[:, 1:] == s[:, :-1]).any(1) if s.shape[1] > 1 else torch.zeros(q1 - q0, dtype=torch.bool)
        out_s[q0:q1], out_i[q0:q1] = s[:, :k], i[:, :k]
        for r in tied.nonzero().squeeze(1).tolist():
            ts, ti = _stable_top(scores_of(q0 + r, q0 + r + 1, 0, ng), k)
            out_s[q0 + r], out_i[q0 + r] = ts[0], ti[0]
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
