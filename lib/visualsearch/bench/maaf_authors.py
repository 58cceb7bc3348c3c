"""The authors' own MAAF and TIRG models (yahoo/maaf), built from a checkout for `bench maaf --authors-code DIR`.

Nothing of theirs is copied into this project: the bench reads a checkout of https://github.com/yahoo/maaf at
commit 49a0df9 (the commit its README names for the MAAF paper) and runs their model code as written, with their
option defaults (`main.parse_opt`), their Fashion IQ run script's options (`scripts/fashioniq.sh`), their
optimizer parameter groups (`main.create_model_and_optimizer`) and their loss (`compute_loss`, batch-based
classification).

Shims their code needs on a CPU-only machine with today's torch, each applied only inside this process:

1. `pytorch_pretrained_bert` (imported at module level by `models/text_model.py` for its BERT option, which the
   bench does not use) is not installed: an empty stand-in module with the two names it imports.
2. Their code calls `.cuda()` unconditionally on the model and on tensors it creates in `forward`: while their
   model is built and stepped, `Tensor.cuda` and `Module.cuda` are the identity (`cpu_shims()`).
3. `torchvision.models.resnet50(pretrained=...)` would download ImageNet weights: the bench passes their own
   `--not_pretrained` flag (speed does not depend on the weights).
4. `models/image_model.py` hard-codes the token grids of a 224 px input (28**2, 14**2, 7**2 for layers 2-4); for
   other input sizes those three constants are replaced by the real grids ((size/8)**2, (size/16)**2,
   (size/32)**2) in a temporary copy of their `models/` package, which is what is imported.
5. `main.py` is not imported (it pulls tensorboardX, gitpython and their dataset loaders at import time): its
   `parse_opt` and `create_model_and_optimizer` are read from it with `ast` and executed.
6. At 49a0df9 `create_model_and_optimizer` asks `img_text_composition_models` for `TIRG`, `Concat` and
   `TIRGLastConv`, which live in `models/third_party/tirg.py` (a release bug: their `--model=tirg` fails as
   shipped); the namespace it is executed with offers those three classes from there.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import shlex
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

COMMIT = "49a0df9"
# Options of their scripts/fashioniq.sh that concern files, logging or the run's length, not the model or the step.
IGNORED_OPTIONS = ("--dataset_path", "--savedir", "--exp_name", "--num_iters", "--inspect", "--loader_num_workers",
                   "--learning_rate_decay_frequency")


@contextlib.contextmanager
def cpu_shims():
    """Shim 2: `.cuda()` is the identity while their code runs on a CPU-only machine."""
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda


def check_checkout(directory: Path) -> Path:
    """The checkout's root, or a clear error naming what is missing."""
    root = Path(directory).expanduser().resolve()
    for needed in ("main.py", "models/img_text_composition_models.py", "models/image_model.py",
                   "scripts/fashioniq.sh"):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"--authors-code {root}: no {needed}; expected a checkout of yahoo/maaf at "
                                    f"commit {COMMIT} (git clone https://github.com/yahoo/maaf && git -C maaf "
                                    f"checkout {COMMIT})")
    return root


def script_options(root: Path, model: str) -> list[str]:
    """Their scripts/fashioniq.sh options (the MAAF run), with `--model` set to `model` and no weights download."""
    words = shlex.split((root / "scripts" / "fashioniq.sh").read_text().replace("\\\n", " "), comments=True)
    options = [w for w in words if w.startswith("--") and not w.startswith(IGNORED_OPTIONS)
               and not w.startswith("--model=")]
    return options + [f"--model={model}", "--not_pretrained"]


def _import_models(root: Path, image_size: int, workdir: Path) -> types.ModuleType:
    """Shims 1 and 4: import their `models` package from a temporary copy with the grids of `image_size`."""
    sys.modules.setdefault("pytorch_pretrained_bert", types.SimpleNamespace(BertTokenizer=None, BertModel=None))
    copy = workdir / "models"
    shutil.copytree(root / "models", copy)
    source = (copy / "image_model.py").read_text()
    for constant, stride in (("28**2", 8), ("14**2", 16), ("7**2", 32)):
        source = source.replace(constant, f"{image_size // stride}**2")
    (copy / "image_model.py").write_text(source)
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    sys.path.insert(0, str(workdir))
    try:
        return importlib.import_module("models.img_text_composition_models")
    finally:
        sys.path.remove(str(workdir))


def _main_functions(root: Path, composition: types.ModuleType) -> dict:
    """Shim 5: `parse_opt` and `create_model_and_optimizer` from their main.py, executed without its imports."""
    tree = ast.parse((root / "main.py").read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("parse_opt", "create_model_and_optimizer")]
    tirg = importlib.import_module("models.third_party.tirg")
    models = types.SimpleNamespace(**vars(composition))
    for name in ("TIRG", "Concat", "TIRGLastConv"):  # shim 6
        if not hasattr(models, name) and hasattr(tirg, name):
            setattr(models, name, getattr(tirg, name))
    namespace = {"argparse": argparse, "torch": torch, "sys": sys, "img_text_composition_models": models}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(root / "main.py"), "exec"), namespace)
    return namespace


class AuthorsModel:
    """One of their models with its optimizer, stepped exactly as their train loop steps it."""

    def __init__(self, directory: Path, model: str, image_size: int, texts: list[str]):
        root = check_checkout(directory)
        with tempfile.TemporaryDirectory() as workdir, cpu_shims():
            composition = _import_models(root, image_size, Path(workdir))
            functions = _main_functions(root, composition)
            argv, sys.argv = sys.argv, ["main.py", *script_options(root, model)]
            try:
                self.opt = functions["parse_opt"]()
            finally:
                sys.argv = argv
            self.model, self.optimizer = functions["create_model_and_optimizer"](self.opt, texts)
        self.model.train()

    def step(self, source: torch.Tensor, texts: list[str], target: torch.Tensor) -> float:
        """One training step (their `training_1_iter` without its logging): loss, zero_grad, backward, step."""
        with cpu_shims():
            loss = self.model.compute_loss(source, texts, target, soft_triplet_loss=False)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return float(loss)
