"""Exact retrieval and Recall@K against naive loops, with ties, exclusions, chunking and FAISS."""
import pytest
import torch

from visualsearch.evaluate import recall_at_k, retrieve


def naive_topk(q, g, k, exclude=None):
    """Python loop: score every item, drop the excluded one, sort by (-score, index)."""
    out = []
    for i in range(q.shape[0]):
        items = [(-float(q[i] @ g[j]), j) for j in range(g.shape[0]) if exclude is None or j != int(exclude[i])]
        out.append([j for _, j in sorted(items)[:k]])
    return torch.tensor(out)


def naive_recall(topk, ql, gl, k):
    return sum(any(gl[j] == ql[i] for j in topk[i][:k]) for i in range(len(ql))) / len(ql)


@pytest.mark.parametrize("chunk,gchunk", [(1, 3), (4, 7), (1000, 100000)])
def test_matches_naive_loop_with_ties(chunk, gchunk):
    g = torch.randint(-2, 3, (40, 4)).float()   # small integer vectors: many tied scores
    q = torch.randint(-2, 3, (13, 4)).float()
    top = retrieve(q, g, k=10, chunk_size=chunk, gallery_chunk_size=gchunk)
    assert torch.equal(top.indices, naive_topk(q, g, 10))
    assert torch.allclose(top.scores, (q @ g.T).gather(1, top.indices))


def test_exclusion_self_and_reference():
    """Integer-valued vectors: every score is exact in float32 whatever the summation order, so ties are real
    ties (with random floats, a duplicated gallery vector can score one ulp apart in two blocks; see retrieve)."""
    torch.manual_seed(11)  # this seed once drew such a duplicate with float queries
    g = torch.randint(-2, 3, (30, 4)).float()
    top = retrieve(g, g, k=5, exclude="self", chunk_size=7, gallery_chunk_size=8)
    assert torch.equal(top.indices, naive_topk(g, g, 5, exclude=torch.arange(30)))
    assert not (top.indices == torch.arange(30).unsqueeze(1)).any()
    q = torch.randint(-3, 4, (9, 4)).float()
    ref = torch.tensor([0, 3, -1, 29, 5, 5, 12, -1, 1])
    top = retrieve(q, g, k=6, exclude=ref, chunk_size=4, gallery_chunk_size=5)
    naive = naive_topk(q, g, 6, exclude=ref)
    assert torch.equal(top.indices, naive)


def test_k_capped_to_gallery():
    g = torch.randn(5, 3)
    assert retrieve(g, g, k=100, exclude="self").indices.shape == (5, 4)
    assert retrieve(g[:2], g, k=100).indices.shape == (2, 5)


def test_chunked_equals_unchunked_on_random_data():
    torch.manual_seed(0)
    q, g = torch.randn(200, 16), torch.randn(1000, 16)
    a = retrieve(q, g, k=20, chunk_size=1000, gallery_chunk_size=10**6)
    b = retrieve(q, g, k=20, chunk_size=17, gallery_chunk_size=93)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.scores, b.scores)


def test_faiss_returns_the_exact_rankings():
    torch.manual_seed(1)
    q, g = torch.nn.functional.normalize(torch.randn(100, 32), dim=1), torch.nn.functional.normalize(torch.randn(500, 32), dim=1)
    for exclude in (None, torch.randint(-1, 500, (100,))):
        a = retrieve(q, g, k=10, exclude=exclude)
        b = retrieve(q, g, k=10, exclude=exclude, backend="faiss")
        assert torch.equal(a.indices, b.indices)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
    a = retrieve(g, g, k=10, exclude="self")
    b = retrieve(g, g, k=10, exclude="self", backend="faiss")
    assert torch.equal(a.indices, b.indices)


def test_recall_matches_naive_with_several_relevant_items():
    torch.manual_seed(2)
    q, g = torch.randn(50, 8), torch.randn(120, 8)
    ql, gl = torch.randint(0, 10, (50,)), torch.randint(0, 10, (120,))
    top = retrieve(q, g, k=30)
    r = recall_at_k(top.indices, ql, gl, ks=(1, 5, 10, 30))
    for k in (1, 5, 10, 30):
        assert r[k] == pytest.approx(naive_recall(top.indices.tolist(), ql.tolist(), gl.tolist(), k))


def test_recall_hand_computed():
    idx = torch.tensor([[2, 0, 1], [1, 2, 0]])
    ql = torch.tensor([7, 9])
    gl = torch.tensor([7, 8, 9])      # query 0's match is at rank 2, query 1's at rank 2 too (index 2)
    assert recall_at_k(idx, ql, gl, ks=(1, 2, 3)) == {1: 0.0, 2: 1.0, 3: 1.0}


def test_bad_arguments_are_named():
    g = torch.randn(5, 3)
    with pytest.raises(ValueError, match="dimension"):
        retrieve(torch.randn(2, 4), g, 2)
    with pytest.raises(ValueError, match="backend"):
        retrieve(g, g, 2, backend="annoy")
    with pytest.raises(ValueError, match="exclude"):
        retrieve(g, g, 2, exclude="others")


def test_wide_blocks_match_naive_with_ties():
    """Wide blocks with many ties: the compiled merge must keep the lower index among equal scores."""
    torch.manual_seed(3)
    g = torch.randint(-3, 4, (4096, 3)).float()
    q = torch.randint(-3, 4, (6, 3)).float()
    top = retrieve(q, g, k=5, gallery_chunk_size=2048)
    assert torch.equal(top.indices, naive_topk(q, g, 5))
    q, g = torch.randn(20, 8), torch.randn(8192, 8)
    a = retrieve(q, g, k=10, gallery_chunk_size=8192)
    b = retrieve(q, g, k=10, gallery_chunk_size=100)   # narrow blocks: many merges into the running top
    assert torch.equal(a.indices, b.indices)


def test_running_top_over_uneven_blocks_gives_the_exact_top_k():
    """Later gallery blocks only insert items that beat the running k-th score; with exclusion, ties and
    blocks of uneven width the result must equal a stable sort of the full score matrix."""
    torch.manual_seed(5)
    q = torch.randint(-2, 3, (37, 6)).float()
    g = torch.randint(-2, 3, (20000, 6)).float()
    ref = torch.randint(-1, 20000, (37,))
    top = retrieve(q, g, k=10, exclude=ref, chunk_size=16, gallery_chunk_size=4096)
    s = q @ g.T
    rows = torch.arange(37)[ref >= 0]
    s[rows, ref[ref >= 0]] = float("-inf")
    want = (-s).argsort(dim=1, stable=True)[:, :10]
    assert torch.equal(top.indices, want)
    qf, gf = torch.randn(50, 32), torch.randn(30000, 32)
    want = (-(qf @ gf.T)).argsort(dim=1, stable=True)[:, :20]
    assert torch.equal(retrieve(qf, gf, k=20, gallery_chunk_size=4096).indices, want)


def test_non_finite_embeddings_are_named():
    """A NaN never beats a running k-th score, so it would silently drop out of every ranking: refuse it."""
    g = torch.randn(6, 3)
    q = torch.randn(4, 3)
    q[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"queries hold NaN or infinite values in 1 rows \(first: \[2\]\)"):
        retrieve(q, g, 2)
    g[5, 0] = float("inf")
    with pytest.raises(ValueError, match="gallery hold NaN"):
        retrieve(torch.randn(4, 3), g, 2)


def test_scores_are_returned_best_first_with_their_indices():
    torch.manual_seed(4)
    q, g = torch.randn(30, 8), torch.randn(3000, 8)
    top = retrieve(q, g, k=7, chunk_size=8, gallery_chunk_size=256)
    assert (top.scores[:, :-1] >= top.scores[:, 1:]).all()
    assert torch.allclose(top.scores, (q @ g.T).gather(1, top.indices), atol=1e-5)
    assert top.indices.dtype == torch.long and top.scores.dtype == torch.float32


def _retrieve_in_child(seed, threads=None):
    if threads:
        torch.set_num_threads(threads)  # as forked workers must: torch's own OpenMP pool does not survive fork
    g = torch.Generator().manual_seed(seed)
    q, gal = torch.randn(3000, 16, generator=g), torch.randn(5000, 16, generator=g)
    return retrieve(q, gal, 5).indices


def test_a_forked_child_can_retrieve_after_its_parent_did():
    """Face fine-tuning forks one-thread workers after the parent has retrieved; a GNU OpenMP pool inherited
    through fork (numba's parallel loops use one on Linux) deadlocked the child's first retrieval. A hang fails
    here by timeout."""
    import multiprocessing as mp

    want = _retrieve_in_child(7)   # the parent retrieves first, with its threads
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_retrieve_in_child, (7, 1)).get(timeout=60)
    assert torch.equal(got, want)


def test_embed_batches_normalises_and_keeps_order():
    from visualsearch.evaluate import embed

    table = torch.randn(23, 5)
    calls = []

    def fn(idx):
        calls.append(len(idx))
        return table[idx] * 3

    out = embed(fn, 23, batch_size=10)
    assert calls == [10, 10, 3]
    assert torch.allclose(out, torch.nn.functional.normalize(table, dim=1), atol=1e-6)
    sub = embed(lambda idx: table[idx], torch.tensor([4, 2, 9]), batch_size=2, normalize=False)
    assert torch.equal(sub, table[[4, 2, 9]])
    assert embed(fn, 0).shape[0] == 0


def test_search_caps_k_at_the_retrievable_items_and_matches_naive():
    from visualsearch.evaluate import search

    g = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    q = g[[0, 3]] + 0.01 * torch.randn(2, 4)
    gl, ql = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1])
    r = search(q, g, ql, gl, ks=(1, 2, 50))
    top = naive_topk(q, g, 6)
    assert r.k_cap == 6 and torch.equal(r.indices, top)
    assert r.recall[1] == naive_recall(top.tolist(), ql, gl, 1) and r.recall[50] == 1.0
    assert r.percent() == {f"R@{k}": 100 * v for k, v in r.recall.items()}
    # exclude one item per query: at most 5 retrievable; a query whose only match is excluded is a miss at every k
    gl2 = torch.tensor([0, 5, 1, 1, 2, 2])
    r2 = search(q, g, ql, gl2, ks=(1, 5, 50), exclude=torch.tensor([0, 2]))
    assert r2.k_cap == 5 and r2.indices.shape[1] == 5 and 0 not in r2.indices[0].tolist()
    assert r2.recall[50] == 0.5 and r2.recall[5] == 0.5


def test_recall_beyond_the_retrieved_columns_counts_no_miss_as_a_hit():
    """k above the retrieved columns (a gallery smaller than k; a query whose only match was excluded, as a
    Fashion IQ target equal to its reference) is evaluated on what was retrieved: a miss stays a miss."""
    g = torch.eye(3)
    top = retrieve(g[:2], g, k=50)                       # gallery of 3: 3 columns, k asked 50
    assert top.indices.shape[1] == 3
    assert recall_at_k(top.indices, torch.tensor([0, 7]), torch.tensor([0, 1, 2]), ks=(1, 10, 50)) == {
        1: 0.5, 10: 0.5, 50: 0.5}                        # query 1's label is nowhere: a miss at every k
    excl = retrieve(g[:2], g, k=50, exclude=torch.tensor([0, -1]))
    r = recall_at_k(excl.indices, torch.tensor([0, 1]), torch.tensor([0, 1, 2]), ks=(1, 50))
    assert r == {1: 0.5, 50: 0.5}                        # query 0's only match is the excluded item


def test_retrieval_leaves_torch_thread_count_as_it_was():
    """In a fresh process (where numba's OpenMP pool has not started yet): a training after an evaluation must
    run on the threads it was given."""
    import subprocess
    import sys

    prog = ("import torch; from visualsearch.evaluate import retrieve; torch.set_num_threads(1); "
            "retrieve(torch.randn(40, 8), torch.randn(300, 8), k=5); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
