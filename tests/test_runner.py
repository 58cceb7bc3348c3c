"""The papermill runner on a tiny notebook: parameters injected, outputs listed, failures named."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from visualsearch.runner import run_notebook

FIXTURES = Path(__file__).parent / "fixtures"


def test_parameters_are_injected_and_outputs_listed(tmp_path):
    run = run_notebook("toy_notebook", "default", tmp_path, overrides={"value": 0.25}, source_dir=FIXTURES)
    assert run.status == "ok", run.failure
    table = pd.read_csv(tmp_path / "results" / "toy_notebook" / "numbers.csv")
    assert table["reproduced"].tolist() == [0.25] and table["preset"].tolist() == ["default"]
    assert [p.name for p in run.written] == ["numbers.csv"]
    executed = json.loads(run.output.read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "value" in "".join(injected[0]["source"])


def test_failure_names_the_cell_and_keeps_the_executed_notebook(tmp_path):
    run = run_notebook("toy_notebook", "smoke", tmp_path, overrides={"fail": True}, source_dir=FIXTURES)
    assert run.status == "failed"
    assert "ValueError: boom on purpose" in run.failure and "if overrides.get" in run.failure
    assert run.output.is_file()
    # what ran before the failing cell is kept
    assert (tmp_path / "results" / "toy_notebook" / "numbers.csv").is_file()


def test_unknown_notebook_is_refused_with_the_list(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "visualsearch.runner", "--only", "no_such_notebook",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown notebook(s) no_such_notebook" in proc.stderr


def test_run_times_are_kept_per_notebook_and_for_the_full_set(tmp_path):
    from visualsearch.runner import ALL, record_times

    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "run_times.json"
    path.write_text(json.dumps({"default": {"cold_s": 501.4, "warm_s": 23.0}}))  # the older, mixed format
    assert record_times(tmp_path, "default", "maaf_ablations", 500.0, warm=False) == {"cold_s": 500.0}
    assert record_times(tmp_path, "default", "maaf_ablations", 20.04, warm=True) == {"cold_s": 500.0, "warm_s": 20.0}
    record_times(tmp_path, "default", ALL, 1800.0, warm=False)
    record_times(tmp_path, "smoke", "maaf_ablations", 60.0, warm=False)
    times = json.loads(path.read_text())
    assert times["default"] == {"maaf_ablations": {"cold_s": 500.0, "warm_s": 20.0}, ALL: {"cold_s": 1800.0}}
    assert times["smoke"] == {"maaf_ablations": {"cold_s": 60.0}}


def test_set_items_become_nested_overrides_that_the_config_validates():
    from visualsearch.config import ConfigError, load_params
    from visualsearch.runner import parse_overrides

    o = parse_overrides(["model.input_size=48", "finetune.steps=300", "seeds=[0, 1, 2]", "model.widths=[8, 8, 8, 8]"])
    assert o == {"model": {"input_size": 48, "widths": [8, 8, 8, 8]}, "finetune": {"steps": 300}, "seeds": [0, 1, 2]}
    p = load_params("face_attribute_sharing", "smoke", o)
    assert p["model"]["input_size"] == 48 and p["finetune"]["steps"] == 300 and p["finetune"]["batch_size"] == 32
    with pytest.raises(ConfigError, match="model.input_sise"):
        load_params("face_attribute_sharing", "smoke", parse_overrides(["model.input_sise=48"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["model.input_size"])
