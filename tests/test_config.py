import subprocess

import pytest

from visualsearch import config
from visualsearch.config import ConfigError, available_notebooks, load_params


@pytest.fixture
def configs(tmp_path, monkeypatch):
    nb = tmp_path / "configs" / "toy"
    nb.mkdir(parents=True)
    (nb / "default.yaml").write_text("steps: 100\nlr: 0.01\nname: resnet18\nuse_bn: true\nopt: null\n"
                                     "sizes: [1, 2]\nmodel:\n  width: 64\n  depth: 2\n")
    (nb / "smoke.yaml").write_text("steps: 5\nmodel:\n  width: 8\n")
    (nb / "paper.yaml").write_text("steps: 250000\n")
    monkeypatch.setattr(config, "configs_dir", lambda: tmp_path / "configs")
    return nb


def test_merge_order_default_preset_overrides(configs):
    p = load_params("toy", "smoke", {"lr": 1})
    assert p.steps == 5 and p.lr == 1 and p.model.width == 8 and p.model.depth == 2
    assert p.preset == "smoke" and p.device == "cpu" and p.data_root is None
    assert load_params("toy", "default").steps == 100


def test_unknown_preset_lists_valid(configs):
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*smoke, default, paper"):
        load_params("toy", "fast")


def test_unknown_parameter_lists_valid(configs):
    with pytest.raises(ConfigError, match=r"unknown parameter 'stepz'.*lr, model, name, opt, sizes, steps, use_bn"):
        load_params("toy", "smoke", {"stepz": 3})
    with pytest.raises(ConfigError, match=r"unknown parameter 'model.heads'.*depth, width"):
        load_params("toy", "smoke", {"model": {"heads": 3}})


def test_wrong_type_is_named(configs):
    with pytest.raises(ConfigError, match="'steps' must be int"):
        load_params("toy", "smoke", {"steps": "many"})
    with pytest.raises(ConfigError, match="'use_bn' must be bool"):
        load_params("toy", "smoke", {"use_bn": 1})
    # an int where a float is declared, anything where null is declared, are fine
    assert load_params("toy", "smoke", {"lr": 1, "opt": "adam"}).opt == "adam"


def test_bad_preset_file_and_unknown_notebook(configs):
    (configs / "paper.yaml").write_text("stepz: 1\n")
    with pytest.raises(ConfigError, match="paper.yaml: unknown parameter 'stepz'"):
        load_params("toy", "paper")
    with pytest.raises(ConfigError, match="no presets for notebook 'nope'.*toy"):
        load_params("nope", "smoke")


def test_data_root_must_exist(configs, tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_params("toy", "smoke", data_root=tmp_path / "missing")


def test_every_shipped_notebook_has_consistent_presets():
    """Each configs/<notebook>/ preset validates against its default.yaml."""
    for nb in config.available_notebooks():
        for preset in config.PRESETS:
            load_params(nb, preset)


def test_a_run_at_its_own_parameters_writes_to_scratch_not_to_the_committed_results():
    """out_dir None (the notebooks' parameters cell) is the preset's git-ignored scratch folder; a relative
    out_dir is taken from the repository root (papermill runs notebooks from notebooks/); both are recorded
    relative to the root, so no machine path reaches a committed file."""
    from visualsearch.config import repo_root, resolve_out_dir

    nb = available_notebooks()[0]
    assert load_params(nb, "smoke").out_dir == "scratch/smoke"
    assert load_params(nb, "default", out_dir="scratch/x").out_dir == "scratch/x"
    assert resolve_out_dir("scratch/x", "smoke") == repo_root() / "scratch" / "x"
    assert resolve_out_dir(None, "paper") == repo_root() / "scratch" / "paper"
    ignored = subprocess.run(["git", "check-ignore", "-q", "scratch/smoke/results/x.csv"], cwd=repo_root())
    assert ignored.returncode == 0, "scratch/ must be git-ignored"
