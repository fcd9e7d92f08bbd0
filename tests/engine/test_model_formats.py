"""Models as banks ship them (XGBoost, LightGBM, ONNX, skops): each against its library's own predict_proba,
explained end to end on German credit, refused in one line when unsafe, broken or missing its library."""

from __future__ import annotations

import hashlib
import re
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

from tasks.engine import BatchedLime, ReferenceStats, fit_reference
from tasks.errors import ModelError
from tasks.inputs.config import FeatureConfig, ModelConfig
from tasks.inputs.model import entrypoint_sha256, load_model, model_audit, model_sha256
from tasks.inputs.model_formats import infer_format, runtime_of

GERMAN = Path(__file__).resolve().parents[2] / "bench" / "data" / "german_credit.csv.gz"
CLASSES = ["good", "bad"]
TOLERANCE = 1e-5


@dataclass
class German:
    x: np.ndarray  # float64 [1000, 20], categoricals as codes
    y: np.ndarray  # 1 = bad credit risk
    features: list[FeatureConfig]
    stats: ReferenceStats
    rows: np.ndarray  # float32 rows to compare on: the applicants and perturbations around them


@pytest.fixture(scope="module")
def german() -> German:
    frame = pd.read_csv(GERMAN)
    y = (frame.pop("creditability") == "bad").to_numpy(np.int64)
    features, columns = [], []
    for name in frame.columns:
        if frame[name].dtype.kind in "iuf":
            features.append(FeatureConfig(name=name, label=name, kind="numeric", decimals=0))
            columns.append(frame[name].to_numpy(np.float64))
        else:
            levels = sorted(frame[name].astype(str).unique())
            features.append(FeatureConfig(name=name, label=name, kind="categorical", categories=levels))
            columns.append(frame[name].astype(str).map({v: i for i, v in enumerate(levels)}).to_numpy(np.float64))
    x = np.column_stack(columns)
    rng = np.random.default_rng(0)
    jitter = x + rng.normal(0, 1, x.shape) * x.std(0) * 0.3  # off-grid values, as LIME's samples are
    rows = np.concatenate([x, jitter]).astype(np.float32)
    return German(x, y, features, fit_reference(x, features), rows)


def config(path: Path | None = None, **kwargs) -> ModelConfig:
    return ModelConfig(path=path, classes=CLASSES, explain="bad", **kwargs)


def limelight_p(path: Path, german: German, **kwargs) -> np.ndarray:
    model = load_model(config(path, **kwargs), len(german.features))
    return model(torch.as_tensor(german.rows)).double().numpy()


def assert_parity(ours: np.ndarray, native: np.ndarray) -> None:
    assert ours.shape == native.shape
    assert float(np.abs(ours - native).max()) <= TOLERANCE


def explain_end_to_end(path: Path, german: German, native_p1: np.ndarray, **kwargs) -> None:
    """The plain engine explains 8 applicants through the model; its model_pred is the native P(bad)."""
    model = load_model(config(path, **kwargs), len(german.features))
    engine = BatchedLime(stats=german.stats, model=model, explain_index=1, num_samples=1000, seed=5)
    out = engine.explain(german.x[:8], [f"g{i}" for i in range(8)])
    assert out.feature_index.shape == (8, 3)
    assert np.all(np.isfinite(out.fidelity)) and np.all(np.isfinite(out.weights))
    np.testing.assert_allclose(out.model_pred, native_p1[:8], atol=TOLERANCE)
    assert len(set(map(tuple, out.feature_index))) > 1  # different applicants, different factors


@pytest.fixture(scope="module")
def xgb_classifier(german: German) -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=60, max_depth=4, learning_rate=0.2, base_score=0.3, n_jobs=1,
                             random_state=0).fit(german.x, german.y)


@pytest.mark.parametrize("suffix", [".ubj", ".json"])
def test_xgboost_file_matches_predict_proba(german: German, xgb_classifier, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    xgb_classifier.get_booster().save_model(str(path))
    assert infer_format(path) == "xgboost"
    native = xgb_classifier.predict_proba(german.rows)
    assert_parity(limelight_p(path, german), native)
    explain_end_to_end(path, german, native[: len(german.x), 1])


def test_xgboost_multiclass_and_margin_objectives(german: German, tmp_path: Path) -> None:
    target = german.y + (german.x[:, 1] > 24)  # three classes
    multi = xgb.XGBClassifier(n_estimators=20, max_depth=3, objective="multi:softprob", n_jobs=1).fit(german.x, target)
    multi.get_booster().save_model(str(tmp_path / "multi.ubj"))
    model = load_model(ModelConfig(path=tmp_path / "multi.ubj", classes=["a", "b", "c"], explain="c"),
                       len(german.features))
    assert_parity(model(torch.as_tensor(german.rows)).double().numpy(), multi.predict_proba(german.rows))
    raw = xgb.XGBClassifier(n_estimators=20, max_depth=3, objective="binary:logitraw", n_jobs=1).fit(german.x, german.y)
    raw.get_booster().save_model(str(tmp_path / "raw.json"))
    margin = raw.get_booster().inplace_predict(german.rows, predict_type="margin").astype(np.float64)
    ours = limelight_p(tmp_path / "raw.json", german)
    assert_parity(ours[:, 1], 1 / (1 + np.exp(-margin)))


def test_xgboost_regression_is_refused(german: German, tmp_path: Path) -> None:
    xgb.XGBRegressor(n_estimators=3).fit(german.x, german.y).get_booster().save_model(str(tmp_path / "reg.ubj"))
    with pytest.raises(ModelError, match=r"reg\.ubj: XGBoost objective 'reg:squarederror' is not a classifier"):
        load_model(config(tmp_path / "reg.ubj"), len(german.features))


def test_lightgbm_file_matches_predict_proba(german: German, tmp_path: Path) -> None:
    classifier = lgb.LGBMClassifier(n_estimators=60, num_leaves=15, verbose=-1, n_jobs=1).fit(german.x, german.y)
    path = tmp_path / "model.txt"
    classifier.booster_.save_model(str(path))
    assert infer_format(path) == "lightgbm"
    native = classifier.predict_proba(german.rows.astype(np.float64))
    assert_parity(limelight_p(path, german), native)
    explain_end_to_end(path, german, native[: len(german.x), 1])


def test_lightgbm_rows_on_a_threshold_go_the_native_way(german: German, tmp_path: Path) -> None:
    """The known trap: a float64 threshold rounded to float32 sends a row sitting on it the other way. Rows at
    float32(t) and one float32 step either side, for every threshold t of the model, must match native."""
    numeric = german.x[:, [i for i, f in enumerate(german.features) if f.kind == "numeric"]]
    rng = np.random.default_rng(1)
    x = np.column_stack([numeric + rng.normal(0, 0.37, numeric.shape), german.y + rng.normal(0, 1, len(german.y))])
    classifier = lgb.LGBMClassifier(n_estimators=40, num_leaves=15, verbose=-1, n_jobs=1).fit(x, german.y)
    path = tmp_path / "model.txt"
    classifier.booster_.save_model(str(path))
    split_features = [list(map(int, m.split())) for m in re.findall(r"split_feature=(.*)", path.read_text())]
    split_thresholds = [list(map(float, m.split())) for m in re.findall(r"\nthreshold=(.*)", path.read_text())]
    thresholds = [(f, t) for fs, ts in zip(split_features, split_thresholds, strict=True)
                  for f, t in zip(fs, ts, strict=True)]
    rounded_up = sum(float(np.float32(t)) > t for _, t in thresholds)
    assert rounded_up > 10  # the model has thresholds whose float32 lies above them: the rows that would flip
    rows = np.repeat(x[:1].astype(np.float32), 3 * len(thresholds), axis=0)
    for i, (feature, threshold) in enumerate(thresholds):
        at = np.float32(threshold)
        below, above = np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))
        rows[3 * i : 3 * i + 3, feature] = [below, at, above]
    width = x.shape[1]
    features = [FeatureConfig(name=f"f{j}", label=f"f{j}", kind="numeric") for j in range(width)]
    model = load_model(config(path), len(features))
    ours = model(torch.as_tensor(rows)).double().numpy()
    assert_parity(ours, classifier.predict_proba(rows.astype(np.float64)))


def test_skops_estimator_matches_predict_proba(german: German, tmp_path: Path) -> None:
    import skops.io as sio

    classifier = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(german.x, german.y)
    path = tmp_path / "model.skops"
    sio.dump(classifier, path)
    assert infer_format(path) == "skops"
    untrusted = sio.get_untrusted_types(file=path)
    if untrusted:  # skops trusts no type it does not know: the bank reviews and lists them
        with pytest.raises(ModelError, match=r"types skops does not trust by default: .*\[model\] trusted"):
            load_model(config(path), len(german.features))
    native = classifier.predict_proba(german.rows.astype(np.float64))
    assert_parity(limelight_p(path, german, trusted=untrusted), native)
    explain_end_to_end(path, german, native[: len(german.x), 1], trusted=untrusted)


def test_skops_file_with_an_unlisted_type_is_refused(german: German, tmp_path: Path) -> None:
    import operator

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FunctionTransformer, make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(FunctionTransformer(operator.neg), StandardScaler(), LogisticRegression())
    pipeline.fit(german.x, german.y)
    sio.dump(pipeline, tmp_path / "pipe.skops")
    with pytest.raises(ModelError, match=r"pipe\.skops: .*_operator\.neg; .*list them in \[model\] trusted") as error:
        load_model(config(tmp_path / "pipe.skops"), len(german.features))
    assert "\n" not in str(error.value)
    model = load_model(config(tmp_path / "pipe.skops", trusted=["_operator.neg"]), len(german.features))
    assert_parity(model(torch.as_tensor(german.rows)).double().numpy(),
                  pipeline.predict_proba(german.rows.astype(np.float64)))


def test_onnx_trees_match_onnxruntime_and_scikit_learn(german: German, tmp_path: Path) -> None:
    import onnxruntime as ort
    from skl2onnx import to_onnx

    classifier = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(german.x, german.y)
    onnx_model = to_onnx(classifier, german.x[:1].astype(np.float32), options={"zipmap": False})
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    ours = limelight_p(path, german)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    native = session.run(["probabilities"], {session.get_inputs()[0].name: german.rows})[0]
    np.testing.assert_array_equal(ours, native.astype(np.float64))  # ONNX Runtime is the ONNX file's own library
    integer_valued = german.x.astype(np.float32)  # German credit's own rows: no value near a float32 threshold
    assert_parity(ours[: len(german.x)], classifier.predict_proba(integer_valued.astype(np.float64)))
    explain_end_to_end(path, german, native[: len(german.x), 1])


def test_onnx_neural_model_matches_torch(german: German, tmp_path: Path) -> None:
    torch.manual_seed(0)

    class Scaled(torch.nn.Module):
        def __init__(self, scale: np.ndarray, width: int) -> None:
            super().__init__()
            self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
            self.network = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2),
                                               torch.nn.Softmax(dim=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x / self.scale)

    module = Scaled(german.x.std(0) + 1e-9, len(german.features)).eval()
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; the new one needs onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, len(german.features)),), str(path), input_names=["x"],
                          output_names=["probabilities"], dynamic_axes={"x": {0: "rows"}}, dynamo=False)
    with torch.no_grad():
        native = module(torch.as_tensor(german.rows)).double().numpy()
    assert_parity(limelight_p(path, german), native)
    explain_end_to_end(path, german, native[: len(german.x), 1])


def test_onnx_zipmap_output_is_refused_with_the_fix(german: German, tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    classifier = DecisionTreeClassifier(max_depth=3).fit(german.x, german.y)
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(to_onnx(classifier, german.x[:1].astype(np.float32)).SerializeToString())
    with pytest.raises(ModelError, match=r"zipmap\.onnx: .*ZipMap.*'zipmap': False"):
        load_model(config(path), len(german.features))


def test_pickle_and_joblib_are_refused_in_one_line(german: German, tmp_path: Path) -> None:
    import pickle

    import joblib

    classifier = HistGradientBoostingClassifier(max_iter=5).fit(german.x, german.y)
    joblib.dump(classifier, tmp_path / "model.joblib")
    (tmp_path / "model.bin").write_bytes(pickle.dumps(classifier))  # a pickle under another name
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(classifier))
    for name in ("model.joblib", "model.bin", "model.pkl"):
        with pytest.raises(ModelError, match=r"refused: loading one runs arbitrary code.*skops\.io\.dump") as error:
            load_model(config(tmp_path / name), len(german.features))
        assert "\n" not in str(error.value) and name in str(error.value)
    with pytest.raises(ValueError, match="pickle and joblib are refused"):
        config(tmp_path / "model.pkl", format="pickle")


def test_unknown_file_asks_for_the_format(german: German, tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"weights": [1, 2]}')
    with pytest.raises(ModelError, match=r"model\.json: cannot tell the model's format.*\[model\] format"):
        load_model(config(tmp_path / "model.json"), len(german.features))


def test_missing_library_names_the_extra(german: German, xgb_classifier, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.ubj"
    xgb_classifier.get_booster().save_model(str(path))
    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost now raises ImportError
    with pytest.raises(ModelError, match=r"model\.ubj: format 'xgboost' needs the xgboost library .*"
                                         r"pip install 'limelight\[xgboost\]'") as error:
        load_model(config(path), len(german.features))
    assert "\n" not in str(error.value)


def test_wrong_feature_count_is_one_line(german: German, xgb_classifier, tmp_path: Path) -> None:
    path = tmp_path / "model.ubj"
    xgb_classifier.get_booster().save_model(str(path))
    with pytest.raises(ModelError, match=r"model\.ubj: the model takes 20 features, the config lists 19"):
        load_model(config(path), 19)


def test_audit_of_a_model_file(german: German, xgb_classifier, tmp_path: Path) -> None:
    path = tmp_path / "model.ubj"
    xgb_classifier.get_booster().save_model(str(path))
    audit = model_audit(config(path))
    own = hashlib.sha256(path.read_bytes()).hexdigest()
    assert audit.sha256 == audit.file_sha256 == own == model_sha256(config(path))  # what sha256sum prints
    assert audit.format == "xgboost" and audit.runtime.library == "xgboost"
    assert audit.runtime.version == xgb.__version__
    record = audit.to_dict()
    assert record["runtime"] == {"library": "xgboost", "version": xgb.__version__} and record["format"] == "xgboost"
    loaded = load_model(config(path), len(german.features))
    assert (loaded.format, loaded.runtime, loaded.sha256) == ("xgboost", audit.runtime, own)
    assert runtime_of("lightgbm").version == lgb.__version__


def test_entrypoint_files_join_the_model_hash(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "weights.npy"
    np.save(weights, np.array([0.5]))
    (tmp_path / "bank_scorer.py").write_text(textwrap.dedent("""
        import numpy as np

        def load():
            return lambda rows: np.tile([0.5, 0.5], (len(rows), 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with_files = ModelConfig(entrypoint="bank_scorer:load", files=[weights], classes=CLASSES, explain="bad")
    without = ModelConfig(entrypoint="bank_scorer:load", classes=CLASSES, explain="bad")
    audit = model_audit(with_files)
    assert audit.format == "entrypoint" and audit.runtime.library == "python entrypoint"
    assert audit.files == ({"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},)
    assert audit.entrypoint_source["sha256"] == hashlib.sha256((tmp_path / "bank_scorer.py").read_bytes()).hexdigest()
    assert audit.sha256 != model_sha256(without)
    record = audit.to_dict()  # the manifest's record recomputes to the run's model hash
    assert entrypoint_sha256(record["source"], record["entrypoint_source"]["sha256"], record["files"]) == audit.sha256
    np.save(weights, np.array([0.6]))  # the artifact changes: so does the model hash
    assert model_sha256(with_files) != audit.sha256
    weights.unlink()
    with pytest.raises(ModelError, match=r"weights\.npy: \[model\] files: cannot read"):
        model_sha256(with_files)


def test_config_keys() -> None:
    with pytest.raises(ValueError, match="'format' is for a model file"):
        ModelConfig(entrypoint="a:b", format="onnx", classes=CLASSES, explain="bad")
    with pytest.raises(ValueError, match="'files' lists what an entrypoint loads"):
        ModelConfig(path=Path("m.ubj"), files=[Path("w.npy")], classes=CLASSES, explain="bad")
    with pytest.raises(ValueError, match="format"):
        ModelConfig(path=Path("m.bin"), format="catboost", classes=CLASSES, explain="bad")


def test_xgboost_on_cuda_without_cupy_is_one_line(german: German, xgb_classifier, tmp_path: Path, monkeypatch) -> None:
    """The CUDA path hands the worker's tensors to XGBoost through cupy; without it, one line before any CUDA."""
    path = tmp_path / "model.ubj"
    xgb_classifier.get_booster().save_model(str(path))
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ModelError, match=r"model\.ubj: XGBoost on cuda:0 needs cupy .*cupy-cuda12x"):
        load_model(config(path), len(german.features), device="cuda:0")


def test_onnx_trees_are_told_from_neural_models(german: German, tmp_path: Path) -> None:
    """Which ONNX files may use the CUDA provider: not tree ensembles (no CUDA kernels), neural models yes."""
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    from tasks.inputs.model_formats import _has_tree_ops

    tree = DecisionTreeClassifier(max_depth=2).fit(german.x, german.y)
    (tmp_path / "tree.onnx").write_bytes(to_onnx(tree, german.x[:1].astype(np.float32)).SerializeToString())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=1)), (torch.zeros(2, 3),),
                          str(tmp_path / "mlp.onnx"), input_names=["x"], dynamic_axes={"x": {0: "rows"}}, dynamo=False)
    assert _has_tree_ops(tmp_path / "tree.onnx") and not _has_tree_ops(tmp_path / "mlp.onnx")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_xgboost_on_cuda_matches_the_cpu(german: German, xgb_classifier, tmp_path: Path) -> None:
    pytest.importorskip("cupy")
    path = tmp_path / "model.ubj"
    xgb_classifier.get_booster().save_model(str(path))
    model = load_model(config(path), len(german.features), device="cuda:0")
    out = model(torch.as_tensor(german.rows, device="cuda:0"))
    assert out.device.type == "cuda"
    assert_parity(out.double().cpu().numpy(), xgb_classifier.predict_proba(german.rows))
    engine = BatchedLime(stats=german.stats, model=model, explain_index=1, num_samples=1000, seed=5)
    out = engine.explain(german.x[:8], [f"g{i}" for i in range(8)])
    np.testing.assert_allclose(out.model_pred, xgb_classifier.predict_proba(german.x[:8].astype(np.float32))[:, 1],
                               atol=TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_neural_onnx_on_the_cuda_provider(german: German, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    network = torch.nn.Sequential(torch.nn.Linear(len(german.features), 8), torch.nn.Tanh(), torch.nn.Linear(8, 2),
                                  torch.nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(2, len(german.features)),), str(tmp_path / "mlp.onnx"),
                          input_names=["x"], dynamic_axes={"x": {0: "rows"}}, dynamo=False)
    model = load_model(config(tmp_path / "mlp.onnx"), len(german.features), device="cuda:0")
    out = model(torch.as_tensor(german.rows[:100], device="cuda:0") / 100)
    with torch.no_grad():
        native = network(torch.as_tensor(german.rows[:100]) / 100).double().numpy()
    assert out.device.type == "cuda" and np.abs(out.double().cpu().numpy() - native).max() <= TOLERANCE


def test_config_file_names_the_key_of_a_refused_format(tmp_path: Path) -> None:
    from tasks.errors import ConfigError
    from tasks.inputs.config import load_config

    (tmp_path / "run.toml").write_text(textwrap.dedent("""
        [data]
        decisions = "d.parquet"
        reference = "r.parquet"
        [model]
        path = "model.joblib"
        format = "joblib"
        classes = ["good", "bad"]
        explain = "bad"
        [[features]]
        name = "x"
        label = "X"
        kind = "numeric"
    """))
    with pytest.raises(ConfigError, match=r"run\.toml: \[model\] format: pickle and joblib are refused: loading one "
                                          r"runs arbitrary code") as error:
        load_config(tmp_path / "run.toml")
    assert "\n" not in str(error.value)
