"""Tiny models with known behaviour, for the registry, evaluation, scoring and serving tests.

Each is a real ``mlsteps.model`` package (preprocessor, ONNX model, task, signature, drift profile) whose ONNX graph
computes ``sigmoid(bias + sum of weight * term)`` exactly: a term is a numeric column or ``column=value`` (an
indicator). The weights are set rather than trained; the score equals the logistic formula wherever the numeric terms
have no nulls (nulls are median-imputed, as in every model).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnx.numpy_helper

from mlsteps import tracking
from mlsteps.config import load_pipeline_config
from mlsteps.data.datasets import generate_churn
from mlsteps.data.features import TabularPreprocessor
from mlsteps.inference import TaskInfo, onnx_session, predict_frame
from mlsteps.model import REFERENCE_PROFILE_FILE, log_model_package
from mlsteps.monitoring.drift import build_profile, save_profile
from mlsteps.monitoring.drift.profile import prediction_signals

PIPELINE = load_pipeline_config()
MODEL_NAME = PIPELINE.registry.model_name
GOOD = {
    "tenure_months": -0.035,
    "support_calls_90d": 0.22,
    "days_since_last_login": 0.025,
    "late_payments_12m": 0.25,
    "contract_type=monthly": 1.1,
    "contract_type=two_year": -0.9,
}
WORSE = {"tenure_months": -0.035, "contract_type=monthly": 1.1, "contract_type=two_year": -0.9}
WEAK = {"age": 0.01}
SAMPLE = generate_churn(2000, seed=11)
TASK = TaskInfo(task="binary", classes=[0, 1], target=PIPELINE.dataset.target.name, family="risk_score")


def risk_score_onnx(
    preprocessor: TabularPreprocessor, weights: dict[str, float], bias: float = -1.5
) -> onnx.ModelProto:
    """An ONNX model in the package contract whose positive-class logit is ``bias + sum(weight * term)`` on raw
    (unstandardised) feature values: a linear layer on the numeric inputs plus one looked-up weight per category."""
    return linear_onnx(preprocessor, [weights], [bias], "binary")


def linear_onnx(
    preprocessor: TabularPreprocessor, weights: Sequence[dict[str, float]], biases: Sequence[float], task: str
) -> onnx.ModelProto:
    """An ONNX model in the package contract with one linear score ``bias + sum(weight * term)`` per output, on raw
    feature values (a term is a numeric column or ``column=value``): binary gives the sigmoid of its one score as the
    positive class of ``probabilities``, multiclass the softmax of the scores (one per class), regression the single
    score as ``prediction``."""
    width = len(weights)
    numeric_weights = np.array(
        [[output.get(column, 0.0) * stats.std for output in weights] for column, stats in preprocessor.numeric.items()],
        dtype=np.float32,
    ).reshape(len(preprocessor.numeric), width)
    shift = [
        bias + sum(output.get(column, 0.0) * stats.mean for column, stats in preprocessor.numeric.items())
        for output, bias in zip(weights, biases, strict=True)
    ]
    table, offsets = [], []
    for column, vocabulary in preprocessor.vocabularies.items():
        offsets.append(len(table))
        table += [
            [0.0] * width,
            *([output.get(f"{column}={category}", 0.0) for output in weights] for category in vocabulary),
        ]
    constant = onnx.numpy_helper.from_array
    initializers = [
        constant(numeric_weights, "numeric_weights"),
        constant(np.array(shift, dtype=np.float32), "shift"),
        constant(np.array(table or [[0.0] * width], dtype=np.float32), "category_table"),
        constant(np.array(offsets or [0], dtype=np.int64), "category_offsets"),
        constant(np.array([1], dtype=np.int64), "axis_1"),
        constant(np.array([1.0], dtype=np.float32), "one"),
    ]
    node = onnx.helper.make_node
    nodes = [
        node("MatMul", ["numeric", "numeric_weights"], ["numeric_term"]),
        node("Add", ["categories", "category_offsets"], ["table_index"]),
        node("Gather", ["category_table", "table_index"], ["category_weights"]),  # rows x columns x outputs
        node("ReduceSum", ["category_weights", "axis_1"], ["category_term"], keepdims=0),
        node("Add", ["numeric_term", "category_term"], ["terms"]),
        node("Add", ["terms", "shift"], ["scores"]),
    ]
    tensor = onnx.helper.make_tensor_value_info
    if task == "binary":
        nodes += [
            node("Sigmoid", ["scores"], ["positive"]),
            node("Sub", ["one", "positive"], ["negative"]),
            node("Concat", ["negative", "positive"], ["probabilities"], axis=1),
        ]
        output = tensor("probabilities", onnx.TensorProto.FLOAT, ["rows", 2])
    elif task == "multiclass":
        nodes.append(node("Softmax", ["scores"], ["probabilities"], axis=1))
        output = tensor("probabilities", onnx.TensorProto.FLOAT, ["rows", width])
    else:
        nodes.append(node("Squeeze", ["scores", "axis_1"], ["prediction"]))
        output = tensor("prediction", onnx.TensorProto.FLOAT, ["rows"])
    graph = onnx.helper.make_graph(
        nodes,
        f"linear_{task}",
        [
            tensor("numeric", onnx.TensorProto.FLOAT, ["rows", len(preprocessor.numeric)]),
            tensor("categories", onnx.TensorProto.INT64, ["rows", len(preprocessor.vocabularies)]),
        ],
        [output],
        initializers,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def risk_score_model(weights: dict[str, float], bias: float = -1.5) -> tuple[TabularPreprocessor, onnx.ModelProto]:
    """The preprocessor fitted on a fixed churn sample and the risk-score ONNX model on it."""
    dataset = PIPELINE.dataset
    preprocessor = TabularPreprocessor.fit(SAMPLE, dataset.numeric_features, dataset.categorical_features)
    return preprocessor, risk_score_onnx(preprocessor, weights, bias)


def log_package(info: TaskInfo, preprocessor: TabularPreprocessor, model: onnx.ModelProto) -> tuple[str, str]:
    """Log a model package of any task in a training run, its drift profile holding the task's prediction signals on
    the churn sample; returns (run id, model URI)."""
    dataset = PIPELINE.dataset
    features = SAMPLE[[*dataset.numeric_features, *dataset.categorical_features]]
    output = predict_frame(preprocessor, onnx_session(model.SerializeToString()), info, features)
    tracking.start_experiment(PIPELINE.registry.experiment_name)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        profile = Path(tmp) / REFERENCE_PROFILE_FILE
        signals = prediction_signals(info.task, info.classes, output)
        reference = build_profile(SAMPLE, dataset.features, predictions=signals, config=PIPELINE.drift)
        save_profile(reference, str(profile))
        logged = log_model_package(preprocessor, model, info, features.head(5), profile)
    return run.info.run_id, logged.model_uri


def log_model(weights: dict[str, float], bias: float = -1.5) -> tuple[str, str]:
    """Log a risk-score model package (binary) in a training run; returns (run id, model URI)."""
    return log_package(TASK, *risk_score_model(weights, bias))


# The fake models of the other tasks, over the same features: which of three plan changes a customer makes (string
# labels, a softmax over three linear scores) and next month's spend (a linear regression).
PLAN_CHANGE = TaskInfo(task="multiclass", classes=["stay", "downgrade", "leave"], target="plan_change", family="linear")
PLAN_CHANGE_WEIGHTS = (
    {},
    {"support_calls_90d": 0.3, "plan=premium": 0.8, "plan=enterprise": 1.2},
    {"days_since_last_login": 0.02, "late_payments_12m": 0.3, "contract_type=monthly": 1.0},
)
PLAN_CHANGE_BIASES = (0.0, -1.0, -1.5)
SPEND = TaskInfo(task="regression", classes=[], target="next_month_spend", family="linear")
SPEND_WEIGHTS = {"monthly_charges": 1.0, "data_usage_gb": 0.05, "support_calls_90d": -2.0, "plan=enterprise": 40.0}
SPEND_BIAS = 5.0


def task_model(task: str) -> tuple[TaskInfo, TabularPreprocessor, onnx.ModelProto]:
    """The fake model of a task (binary: the ``GOOD`` risk score) with the preprocessor fitted on the churn sample."""
    preprocessor, binary = risk_score_model(GOOD)
    if task == "binary":
        return TASK, preprocessor, binary
    if task == "multiclass":
        return PLAN_CHANGE, preprocessor, linear_onnx(preprocessor, PLAN_CHANGE_WEIGHTS, PLAN_CHANGE_BIASES, task)
    return SPEND, preprocessor, linear_onnx(preprocessor, [SPEND_WEIGHTS], [SPEND_BIAS], task)


def _write_bundle(
    folder: Path, info: TaskInfo, preprocessor: TabularPreprocessor, model: onnx.ModelProto, model_version: int
) -> Path:
    """Write the serving bundle of an ONNX model straight to ``folder`` (no MLflow); returns the folder."""
    from mlsteps.serving_bundle import ColumnSpec, write_bundle_from_parts

    dataset = PIPELINE.dataset
    columns = [ColumnSpec(name, "double") for name in dataset.numeric_features]
    columns += [ColumnSpec(name, "string") for name in dataset.categorical_features]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(model.SerializeToString())
        write_bundle_from_parts(
            folder,
            onnx_model_path=onnx_path,
            preprocessor=preprocessor,
            info=info,
            columns=columns,
            example=SAMPLE[[spec.name for spec in columns]],
            model_name=MODEL_NAME,
            model_version=model_version,
            source_model_uri=f"models:/{MODEL_NAME}/{model_version}",
        )
    return folder


def write_test_bundle(folder: Path, weights: dict[str, float] = GOOD, model_version: int = 1) -> Path:
    """A serving bundle of a risk-score model, written straight to ``folder`` (no MLflow); returns the folder."""
    preprocessor, model = risk_score_model(weights)
    return _write_bundle(folder, TASK, preprocessor, model, model_version)


def write_task_bundle(folder: Path, task: str, model_version: int = 1) -> Path:
    """A serving bundle of the task's fake model (``task_model``), written straight to ``folder``."""
    return _write_bundle(folder, *task_model(task), model_version)


def break_bundle(folder: Path) -> Path:
    """Make a bundle wrong but intact: its smoke expectations no longer match its model, checksums still do.

    Probabilities move one class on (binary: the two swap), predictions move by at least 1 and by more than their
    own size. The model behind it "predicts wrongly", so a server refuses to load it and a deploy's smoke test fails.
    """
    import json

    from mlsteps.serving_bundle import MANIFEST_FILE, SMOKE_FILE, sha256_of

    smoke = json.loads((folder / SMOKE_FILE).read_text())
    outputs = np.asarray(smoke["outputs"], dtype=np.float64)
    moved = np.roll(outputs, 1, axis=1) if outputs.ndim == 2 else outputs + 1.0 + np.abs(outputs)
    smoke["outputs"] = moved.tolist()
    (folder / SMOKE_FILE).write_text(json.dumps(smoke, indent=1))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][SMOKE_FILE] = sha256_of(folder / SMOKE_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return folder


def register_with_bundle(weights: dict[str, float] = GOOD, *, broken: bool = False) -> int:
    """Register a risk-score model as a new version with its serving bundle (broken: see ``break_bundle``).

    Needs MLflow tracking set up (the ``mlflow_tracking`` fixture).
    """
    from mlsteps import serving_bundle

    run_id, model_uri = log_model(weights)
    version = int(mlflow.register_model(model_uri, MODEL_NAME).version)
    client = tracking.client()
    if not broken:
        serving_bundle.publish_bundle(client, MODEL_NAME, version, model_uri, run_id)
        return version
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_test_bundle(Path(tmp) / "bundle", weights, version)
        serving_bundle.upload_bundle(client, MODEL_NAME, version, run_id, break_bundle(folder))
    return version
