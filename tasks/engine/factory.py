"""The configured engine: ``[explain]`` settings -> the batched engine with the per-bin method (default), the
kernel-matched method or lime's, or the reference ``lime`` package.

It sits above the three engines (:mod:`tasks.engine.explainer`, :mod:`tasks.engine.matched`,
:mod:`tasks.engine.reference`), which know nothing of it. The reference engine is imported when chosen, so
that ``lime`` and scikit-learn load only for ``engine = "lime"``.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from typing import TYPE_CHECKING

import torch

from tasks.engine.explainer import BatchedLime
from tasks.engine.matched import KernelMatchedLime
from tasks.engine.perbin import PerBinLime
from tasks.engine.stats import ReferenceStats
from tasks.inputs.config import Config, ExplainConfig
from tasks.inputs.model import LoadedModel

if TYPE_CHECKING:
    from tasks.engine.reference import LimeReference


@functools.cache
def _compiler_available(device_type: str) -> bool:
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return device_type == "cpu" and any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def compile_enabled(setting: str, device: torch.device) -> bool:
    """Whether to fuse the engine's kernels: 'always', 'never', or 'auto' = where a compiler is available."""
    if setting == "auto":
        return _compiler_available(device.type)
    return setting == "always"


def make_explainer(config: Config, stats: ReferenceStats, model: LoadedModel) -> BatchedLime | LimeReference:
    """The configured engine: the batched engine with the per-bin method (default), the kernel-matched method or
    lime's, or the reference ``lime`` package."""
    settings: ExplainConfig = config.explain
    if settings.engine == "lime":
        from tasks.engine.reference import LimeReference

        return LimeReference.from_config(config, stats, model)
    common = dict(
        stats=stats,
        model=model,
        explain_index=config.model.explain_index,
        num_samples=settings.num_samples,
        top_k=settings.top_k,
        seed=settings.seed,
        feature_selection=settings.feature_selection,
        memory_budget_mb=settings.memory_budget_mb,
        compile=compile_enabled(settings.compile, model.device),
        stability_runs=settings.stability_runs,
        adaptive=settings.adaptive,
        max_samples_factor=settings.max_samples_factor,
        confidence=settings.confidence,
        design=settings.design,
    )
    if settings.method == "lime":
        return BatchedLime(**common)
    matched = dict(common, width_grid=settings.width_grid, target_fidelity=settings.target_fidelity,
                   min_effective_share=settings.min_effective_share, min_contrasts=settings.min_contrasts,
                   adverse_threshold=config.report.decision_threshold)
    if settings.method == "per-bin":
        return PerBinLime(**matched, target=settings.target, max_columns=settings.max_columns)
    return KernelMatchedLime(**matched)
