"""Loading models behind one contract, and one-line errors for models that break it."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.engine import BatchedLime
from tasks.errors import ModelError
from tasks.inputs.config import ModelConfig
from tasks.inputs.model import load_model, model_sha256

CLASSES = ["approved", "declined"]


def config(**kwargs) -> ModelConfig:
    return ModelConfig(classes=kwargs.pop("classes", CLASSES), explain=kwargs.pop("explain", "declined"), **kwargs)


def test_torchscript_model(demo) -> None:
    model = load_model(config(path=demo.model_path), len(demo.features))
    out = model(torch.as_tensor(demo.decisions[:5], dtype=torch.float32))
    assert out.shape == (5, 2)
    assert torch.allclose(out.sum(1), torch.ones(5), atol=1e-5)
    assert model.sha256 == model_sha256(config(path=demo.model_path)) and len(model.sha256) == 64


def test_torch_export_archive_gives_the_same_probabilities(demo, tmp_path: Path) -> None:
    from tasks.demo import train_model

    eager, _ = train_model(seed=7)
    eager.eval()
    x = torch.as_tensor(demo.decisions[:8], dtype=torch.float32)
    program = torch.export.export(eager, (x,), dynamic_shapes={"x": {0: torch.export.Dim("rows")}})
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    exported = load_model(config(path=path), len(demo.features))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x))
    assert exported(x[:3]).shape == (3, 2)  # any number of rows


def test_python_entrypoint_with_sklearn_predict_proba(demo, tmp_path: Path, monkeypatch) -> None:
    """A scikit-learn model behind 'package.module:function', explained by the batched engine on the CPU."""
    np.save(tmp_path / "reference.npy", demo.reference)
    labels = demo.model(torch.as_tensor(demo.reference, dtype=torch.float32))[:, 1].numpy() > 0.4
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "bank_model.py").write_text(textwrap.dedent(f"""
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier

        def load():
            x = np.load({str(tmp_path / "reference.npy")!r})
            y = np.load({str(tmp_path / "labels.npy")!r})
            model = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)
            return model.predict_proba
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model(config(entrypoint="bank_model:load", cpu_chunk_rows=4096), len(demo.features))
    engine = BatchedLime(stats=demo.stats, model=model, explain_index=1, num_samples=1000, seed=3)
    out = engine.explain(demo.decisions[:6], demo.ids[:6])
    assert out.feature_index.shape == (6, 3)
    assert np.all((out.model_pred >= 0) & (out.model_pred <= 1))


def test_logits_switch(demo, tmp_path: Path) -> None:
    class Logits(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[:, 0] * 0.0, x[:, 1] * 3.0 - 1.0], dim=1)

    path = tmp_path / "logits.pt"
    torch.jit.save(torch.jit.script(Logits()), str(path))
    with pytest.raises(ModelError, match="not probabilities.*logits"):
        load_model(config(path=path), len(demo.features))
    model = load_model(config(path=path, output="logits"), len(demo.features))
    x = torch.zeros(1, len(demo.features))
    x[0, 1] = 0.5
    assert model(x)[0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item(), abs=1e-6)


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


class _WrongWidth(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=1)


class _ThreeOutputs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x[:, :3], dim=1)


def test_bad_models_give_one_line_errors(demo, tmp_path: Path) -> None:
    d = len(demo.features)
    cases = {
        "model file not found": config(path=tmp_path / "missing.pt"),
        "not a loadable TorchScript": config(path=tmp_path / "corrupt.pt"),
        "fails on input float32": config(path=_save(_WrongWidth(), tmp_path / "width.pt")),
        r"output shape \(2, 3\)": config(path=_save(_ThreeOutputs(), tmp_path / "three.pt")),
        "cannot import": config(entrypoint="no_such_module_xyz:load"),
    }
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a model")
    for message, model_config in cases.items():
        with pytest.raises(ModelError, match=message) as error:
            load_model(model_config, d)
        assert "\n" not in str(error.value)
