"""The face benchmark: pattern parsing and one tiny run printing images/s for the three networks."""
import pytest

from visualsearch.bench import face


def test_parse_pattern():
    assert face.parse_pattern("age@1 gender@4 ethnicity@4 emotion@0") == {"age": 1, "gender": 4, "ethnicity": 4,
                                                                           "emotion": 0}
    with pytest.raises(SystemExit):
        face.parse_pattern("age@1 gender@4")
    with pytest.raises(SystemExit):
        face.parse_pattern("age@x gender@4 ethnicity@4 emotion@0")


def test_bench_prints_speeds(capsys, tmp_path):
    import torch
    threads = torch.get_num_threads()
    face.main(["--preset", "smoke", "--input-size", "32", "--batch-size", "2", "--iters", "1", "--threads", "1",
               "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "four separate networks" in out and "multi-head" in out and "images/s" in out
