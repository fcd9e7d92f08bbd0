"""The batched LIME explainer: sampler -> model -> kernel -> surrogate, for many decisions per pass.

Structure after Captum's explainers: the sampler, the kernel and the surrogate are separate pieces, and
the device is the model's. Decisions are processed in chunks sized to a memory budget; each chunk is one
model call over all its perturbations. On CUDA out-of-memory the chunk is halved and retried (logged), so
no decision is lost.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tasks.config import Config, ExplainConfig
from tasks.engine.rng import decision_keys
from tasks.engine.sampler import QuartileSampler
from tasks.engine.stats import ReferenceStats
from tasks.engine.surrogate import FINAL_ALPHA, WeightedMoments, kernel_moments, ridge_on, select_features
from tasks.errors import ModelError
from tasks.model import LoadedModel

log = logging.getLogger("limelight.engine")

_BYTES_PER_SAMPLE_FEATURE = 96  # sampler and surrogate temporaries per (sample, feature): an upper bound
_MODEL_BYTES_PER_ROW = 2048  # activations of a small tabular model per input row (a conservative default)
_CPU_BUDGET_MB = 1024
_CPU_MODEL_ROWS = 8192  # a small MLP runs ~2x faster per row in calls that keep activations in cache


@dataclass
class Explanations:
    """One row per decision. Factors are ordered by |weight|, largest first."""

    ids: list[str]
    feature_index: np.ndarray  # int64 [B, k]
    weights: np.ndarray  # float64 [B, k]
    intercept: np.ndarray  # [B]
    local_pred: np.ndarray  # [B]
    model_pred: np.ndarray  # [B]
    fidelity: np.ndarray  # [B]: weighted R² of the surrogate on its samples (lime's `score`)
    all_weights: np.ndarray | None = None  # [B, d]: Ridge(alpha=1) on every feature, for audits

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def concatenate(parts: Sequence[Explanations]) -> Explanations:
        """Join explanations of consecutive chunks."""
        has_all = all(p.all_weights is not None for p in parts)
        return Explanations(
            ids=[i for p in parts for i in p.ids],
            feature_index=np.concatenate([p.feature_index for p in parts]),
            weights=np.concatenate([p.weights for p in parts]),
            intercept=np.concatenate([p.intercept for p in parts]),
            local_pred=np.concatenate([p.local_pred for p in parts]),
            model_pred=np.concatenate([p.model_pred for p in parts]),
            fidelity=np.concatenate([p.fidelity for p in parts]),
            all_weights=np.concatenate([p.all_weights for p in parts]) if has_all else None,  # type: ignore[misc]
        )


@dataclass
class BatchedLime:
    """lime's ``explain_instance`` (tabular, default discretised path) for a batch of decisions at once."""

    stats: ReferenceStats
    model: LoadedModel
    explain_index: int
    num_samples: int = 5000
    top_k: int = 3
    seed: int = 0
    feature_selection: str = "auto"
    memory_budget_mb: int | None = None  # default: 1 GiB on CPU, a quarter of the free memory on CUDA
    with_all_weights: bool = True
    model_rows: int | None = None  # rows per model call; default: cache-sized on CPU, the whole chunk on CUDA
    compile: bool = False  # fuse sampling and the kernel/moments step with torch.compile (see compile_enabled)
    _sampler: QuartileSampler = field(init=False, repr=False)
    _chunk: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = self.model.device
        self._build_kernels()
        self._chunk = self.decisions_per_chunk()

    def _build_kernels(self) -> None:
        self._sampler = QuartileSampler(self.stats, self.device, compile=self.compile)
        self._moments = torch.compile(kernel_moments, dynamic=True) if self.compile else kernel_moments

    def decisions_per_chunk(self) -> int:
        """How many decisions fit the memory budget in one pass."""
        per_row = self.stats.num_features * _BYTES_PER_SAMPLE_FEATURE + _MODEL_BYTES_PER_ROW
        rows = self.budget_bytes() // per_row
        return max(1, rows // self.num_samples)

    def budget_bytes(self) -> int:
        if self.memory_budget_mb is not None:
            return self.memory_budget_mb * 2**20
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free // 4
        return _CPU_BUDGET_MB * 2**20

    def explain(self, x: np.ndarray, ids: Sequence[str]) -> Explanations:
        """Explain decisions ``x`` (float64 [B, d], categoricals as codes) with ids ``ids``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.stats.num_features or len(ids) != len(x):
            raise ValueError(f"x must be [B, {self.stats.num_features}] with one id per row, got {x.shape}")
        parts: list[Explanations] = []
        start = 0
        while start < len(x):
            stop = min(start + self._chunk, len(x))
            try:
                parts.append(self._explain_chunk(x[start:stop], list(ids[start:stop])))
            except torch._dynamo.exc.BackendCompilerFailed as error:
                log.warning("torch.compile failed on %s (%s): continuing without it", self.device, error)
                self.compile = False
                self._build_kernels()
                continue
            except torch.OutOfMemoryError:
                if self._chunk == 1:
                    raise
                self._chunk = max(1, self._chunk // 2)
                log.warning("out of memory on %s: retrying with %d decisions per chunk", self.device, self._chunk)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        if not parts:
            return _empty(self.top_k, self.stats.num_features)
        return Explanations.concatenate(parts)

    def _explain_chunk(self, x: np.ndarray, ids: list[str]) -> Explanations:
        device, s, batch = self.device, self.num_samples, len(ids)
        keys = torch.as_tensor(decision_keys(self.seed, ids), device=device)
        own_rows = torch.as_tensor(self._sampler.own_rows(self.stats.discretize(x)), device=device)
        decisions = torch.as_tensor(x, dtype=torch.float32, device=device)
        perturbed = self._sampler.sample(decisions, own_rows, keys, s)

        target = self._predict(perturbed.inputs.view(batch * s, -1)).view(batch, s)
        _check_finite(target, ids, self.model.description)
        del perturbed.inputs

        moments = WeightedMoments(*self._moments(perturbed.same_bin, target, self.stats.kernel_width))
        del perturbed
        selected = select_features(moments, self.top_k, self.feature_selection)
        fit = ridge_on(moments, selected, FINAL_ALPHA)

        order = torch.argsort(fit.coef.abs(), dim=1, descending=True, stable=True)
        features = fit.features.gather(1, order)
        coef = fit.coef.gather(1, order)
        all_weights = None
        if self.with_all_weights:
            everything = torch.arange(self.stats.num_features, device=device).expand(batch, -1)
            all_weights = ridge_on(moments, everything, FINAL_ALPHA).coef.cpu().numpy()
        return Explanations(
            ids=ids,
            feature_index=features.cpu().numpy(),
            weights=coef.cpu().numpy(),
            intercept=fit.intercept.cpu().numpy(),
            # row 0 is all ones in the binary representation, so the surrogate's prediction there is b + Σβ
            local_pred=(fit.intercept + fit.coef.sum(1)).cpu().numpy(),
            model_pred=target[:, 0].cpu().numpy(),
            fidelity=fit.score.cpu().numpy(),
            all_weights=all_weights,
        )

    def _predict(self, rows: torch.Tensor) -> torch.Tensor:
        """The explained class's probability for every row, float64 [n], in model calls of bounded size."""
        step = self.model_rows or (_CPU_MODEL_ROWS if self.device.type == "cpu" else len(rows))
        out = torch.empty(len(rows), dtype=torch.float64, device=self.device)
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            probabilities = self.model(part)
            if probabilities.shape[0] != part.shape[0]:
                raise ModelError(
                    f"{self.model.description}: returned {probabilities.shape[0]} rows for {part.shape[0]}"
                )
            out[start : start + step] = probabilities[:, self.explain_index]
        return out


def _check_finite(target: torch.Tensor, ids: Sequence[str], description: str) -> None:
    bad = ~torch.isfinite(target).all(1)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ModelError(f"{description}: non-finite output for decision {ids[first]!r}")


def _empty(k: int, d: int) -> Explanations:
    return Explanations(
        ids=[],
        feature_index=np.zeros((0, k), dtype=np.int64),
        weights=np.zeros((0, k)),
        intercept=np.zeros(0),
        local_pred=np.zeros(0),
        model_pred=np.zeros(0),
        fidelity=np.zeros(0),
        all_weights=np.zeros((0, d)),
    )



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


def make_explainer(config: Config, stats: ReferenceStats, model: LoadedModel):  # -> BatchedLime | LimeReference
    """The configured engine: the batched engine (default) or the reference ``lime`` package."""
    settings: ExplainConfig = config.explain
    if settings.engine == "lime":
        from tasks.engine.reference import LimeReference

        return LimeReference.from_config(config, stats, model)
    return BatchedLime(
        stats=stats,
        model=model,
        explain_index=config.model.explain_index,
        num_samples=settings.num_samples,
        top_k=settings.top_k,
        seed=settings.seed,
        feature_selection=settings.feature_selection,
        memory_budget_mb=settings.memory_budget_mb,
        compile=compile_enabled(settings.compile, model.device),
    )
