"""The one way to build a composition model by name: MAAF or one of its baselines.

Why its own module: the factory needs both models/maaf.py and models/baselines.py, and the baselines are
built on MAAF's config and base class; kept in maaf.py it made the two import each other.
"""
from __future__ import annotations

from .baselines import build_baseline
from .maaf import MAAF, CompositionModel, MAAFConfig
from .text import Vocabulary


def build_model(cfg: MAAFConfig, vocab: Vocabulary | None = None) -> CompositionModel:
    """MAAF for cfg.fusion == "maaf", else the baseline of that name (models.baselines)."""
    if cfg.fusion == "maaf":
        return MAAF(cfg, vocab)
    return build_baseline(cfg, vocab)
