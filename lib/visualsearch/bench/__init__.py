"""Benchmarks that print figures (never timed tests): python -m visualsearch.bench {retrieval,triplet,face,maaf}."""
