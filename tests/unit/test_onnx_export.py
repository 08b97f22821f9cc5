"""The ONNX contract every family ends in: converters' exports are rewritten to the contract's inputs and output,
and an export that does not reproduce the native model is refused with its largest difference named."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_gbdt import CATEGORICAL_COLUMNS, CLASSES, FAST, NUMERIC_COLUMNS, TASKS, synthetic_split, trainer_context

from mlsteps.evaluation.tasks import onnx_output
from mlsteps.training.api import TrainingData
from mlsteps.training.gbdt import GbdtTrainer
from mlsteps.training.onnx_export import (
    REGRESSION_TOLERANCE,
    ExportError,
    check_export,
    run_onnx,
    to_contract,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NUMERIC, CATEGORICAL = len(NUMERIC_COLUMNS), len(CATEGORICAL_COLUMNS)
EXAMPLE_PARAMS = {"n_estimators": 60, "max_depth": 3}  # training.params, passed to scikit-learn as they are


@pytest.fixture(scope="module")
def example_trainer() -> type:
    """The worked example of your own trainer (examples/ is importable from the repository root)."""
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from examples.trainers.sklearn_gbt import GradientBoostingTrainer
    finally:
        sys.path.remove(str(REPO_ROOT))
    return GradientBoostingTrainer


def _trained(family: type, task: str, seed: int = 7, params: dict | None = None):
    train, validation = synthetic_split(task, 600, seed=1), synthetic_split(task, 200, seed=2)
    default = FAST if family is GbdtTrainer else EXAMPLE_PARAMS
    trainer = family(trainer_context(task, default if params is None else params, seed=seed))
    trainer.fit(train, validation)
    return trainer, validation


def _tiny_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    """A hand-made model, for inputs and outputs no converter here makes."""
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _features(width: int = NUMERIC + CATEGORICAL, name: str = "features") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width])


def _linear_regression(scale: float) -> onnx.ModelProto:
    """features @ weights * scale, rows x 1 (as converters output regression)."""
    weights = helper.make_tensor("weights", TensorProto.FLOAT, [NUMERIC + CATEGORICAL, 1], [1e5, -2e4, 3.0, 7e3, 1.0])
    factor = helper.make_tensor("factor", TensorProto.FLOAT, [], [scale])
    nodes = [
        helper.make_node("MatMul", ["features", "weights"], ["product"]),
        helper.make_node("Mul", ["product", "factor"], ["y"]),
    ]
    return _tiny_model(
        nodes, [_features()], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], [weights, factor]
    )


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("family", ["gbdt", "example"])
def test_each_family_export_becomes_the_contract_and_reproduces_the_model(family, task, example_trainer) -> None:
    trainer, validation = _trained(GbdtTrainer if family == "gbdt" else example_trainer, task)

    contract = to_contract(trainer.to_onnx(validation.numeric, validation.categories), task, NUMERIC, CATEGORICAL)
    native = trainer.predict(validation.numeric, validation.categories)
    check = check_export(contract, native, validation.numeric, validation.categories, task, family=family)

    onnx.checker.check_model(contract, full_check=True)
    inputs = {value.name: value.type.tensor_type.elem_type for value in contract.graph.input}
    assert inputs == {"numeric": TensorProto.FLOAT, "categories": TensorProto.INT64}
    [output] = contract.graph.output
    assert (output.name, output.type.tensor_type.elem_type) == (onnx_output(task), TensorProto.FLOAT)
    assert check.rows == len(validation)
    assert check.max_abs_difference <= check.tolerance * (1 if task != "regression" else np.abs(native).max())
    raw = run_onnx(contract, validation.numeric, validation.categories, task)
    expected_shape = (len(validation),) if task == "regression" else (len(validation), len(CLASSES[task]))
    assert raw.shape == expected_shape and raw.dtype == np.float64


def test_the_contract_model_runs_from_its_file(tmp_path) -> None:
    trainer, validation = _trained(GbdtTrainer, "binary")
    contract = to_contract(trainer.to_onnx(validation.numeric, validation.categories), "binary", NUMERIC, CATEGORICAL)
    path = tmp_path / "model.onnx"
    onnx.save(contract, path)

    from_file = run_onnx(path, validation.numeric, validation.categories, "binary")

    np.testing.assert_array_equal(from_file, run_onnx(contract, validation.numeric, validation.categories, "binary"))
    native = trainer.predict(validation.numeric, validation.categories)
    assert check_export(path, native, validation.numeric, validation.categories, "binary").tolerance == 1e-4


def test_a_dataset_without_categorical_columns_still_has_both_inputs() -> None:
    split = synthetic_split("binary", 300, seed=1)
    numeric_only = TrainingData(split.numeric, split.categories[:, :0], split.target)
    context = replace(trainer_context("binary"), categorical_columns=[], cardinalities=[])
    trainer = GbdtTrainer(context)
    trainer.fit(numeric_only, numeric_only)

    contract = to_contract(trainer.to_onnx(split.numeric, split.categories[:, :0]), "binary", NUMERIC, 0)

    assert [value.name for value in contract.graph.input] == ["numeric", "categories"]
    native = trainer.predict(split.numeric, split.categories[:, :0])
    check_export(contract, native, split.numeric, split.categories[:, :0], "binary")


def test_another_models_export_is_refused_with_its_largest_difference() -> None:
    trainer, validation = _trained(GbdtTrainer, "multiclass")
    other, _ = _trained(GbdtTrainer, "multiclass", params={**FAST, "max_depth": 1, "n_estimators": 5})
    others_export = to_contract(
        other.to_onnx(validation.numeric, validation.categories), "multiclass", NUMERIC, CATEGORICAL
    )
    native = trainer.predict(validation.numeric, validation.categories)
    differences = np.abs(run_onnx(others_export, validation.numeric, validation.categories, "multiclass") - native)
    worst_row = int(differences.max(axis=1).argmax())

    with pytest.raises(ExportError) as refused:
        check_export(others_export, native, validation.numeric, validation.categories, "multiclass", family="gbdt")

    assert str(refused.value) == (
        "the ONNX export of gbdt does not reproduce the native model: largest difference "
        f"{differences.max():.3g} at row {worst_row} (tolerance 0.0001); not registered"
    )


def test_regression_is_checked_relative_to_the_values() -> None:
    validation = synthetic_split("regression", 200, seed=2)
    native = validation.features.astype(np.float64) @ np.array([1e5, -2e4, 3.0, 7e3, 1.0])

    # float32 rounding of values in the hundred thousands is far above 1e-4 absolute, but passes relative.
    faithful = to_contract(_linear_regression(1.0), "regression", NUMERIC, CATEGORICAL)
    check = check_export(faithful, native, validation.numeric, validation.categories, "regression")
    assert check.max_abs_difference > REGRESSION_TOLERANCE
    assert check.tolerance == REGRESSION_TOLERANCE

    # 0.1% off everywhere is above 1e-4 relative.
    scaled = to_contract(_linear_regression(1.001), "regression", NUMERIC, CATEGORICAL)
    with pytest.raises(
        ExportError, match=r"largest difference .* at row \d+ \(tolerance 0.0001 relative to max\(1, \|"
    ):
        check_export(scaled, native, validation.numeric, validation.categories, "regression")


def test_an_output_that_is_not_finite_or_of_another_shape_is_refused() -> None:
    validation = synthetic_split("regression", 50, seed=2)
    native = validation.features.astype(np.float64) @ np.array([1e5, -2e4, 3.0, 7e3, 1.0])
    contract = to_contract(_linear_regression(1.0), "regression", NUMERIC, CATEGORICAL)
    numeric = validation.numeric.copy()
    numeric[3, 0] = np.inf

    with pytest.raises(ExportError, match=r"largest difference inf at row 3 "):
        check_export(contract, native, numeric, validation.categories, "regression", family="mine")
    with pytest.raises(ExportError, match=r"it outputs shape \(50,\) where the native model predicts \(49,\)"):
        check_export(contract, native[:49], validation.numeric, validation.categories, "regression")


def test_a_model_with_the_contract_inputs_keeps_them_and_its_output_is_renamed_and_cast() -> None:
    """Classification takes the first float rank-2 output (here double 'scores') and drops the rest ('label')."""
    nodes = [
        helper.make_node("Cast", ["numeric"], ["numeric64"], to=TensorProto.DOUBLE),
        helper.make_node("Softmax", ["numeric64"], ["scores"], axis=1),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, NUMERIC]),
        helper.make_tensor_value_info("categories", TensorProto.INT64, [None, CATEGORICAL]),
    ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("scores", TensorProto.DOUBLE, [None, NUMERIC]),
    ]
    validation = synthetic_split("multiclass", 40, seed=3)
    exponent = np.exp(validation.numeric.astype(np.float64))

    contract = to_contract(_tiny_model(nodes, inputs, outputs), "multiclass", NUMERIC, CATEGORICAL)

    assert [value.name for value in contract.graph.input] == ["numeric", "categories"]
    assert [value.name for value in contract.graph.output] == ["probabilities"]
    native = exponent / exponent.sum(axis=1, keepdims=True)
    check_export(contract, native, validation.numeric, validation.categories, "multiclass")


def test_a_single_input_already_called_numeric_is_fed_by_the_contract_inputs() -> None:
    model = _linear_regression(1.0)
    model.graph.input[0].name = "numeric"
    model.graph.node[0].input[0] = "numeric"
    validation = synthetic_split("regression", 30, seed=2)
    native = validation.features.astype(np.float64) @ np.array([1e5, -2e4, 3.0, 7e3, 1.0])

    contract = to_contract(model, "regression", NUMERIC, CATEGORICAL)

    onnx.checker.check_model(contract, full_check=True)
    check_export(contract, native, validation.numeric, validation.categories, "regression")


def _label_only() -> onnx.ModelProto:
    nodes = [helper.make_node("ArgMax", ["features"], ["label"], axis=1, keepdims=0)]
    return _tiny_model(nodes, [_features()], [helper.make_tensor_value_info("label", TensorProto.INT64, [None])])


def _two_inputs() -> onnx.ModelProto:
    inputs = [_features(NUMERIC, "a"), _features(CATEGORICAL, "b")]
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    return _tiny_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])])


def _identity(width: int, output_width: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["features"], ["y"])]
    return _tiny_model(
        nodes, [_features(width)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, output_width])]
    )


def _float_categories() -> onnx.ModelProto:
    inputs = [_features(NUMERIC, "numeric"), _features(CATEGORICAL, "categories")]
    nodes = [helper.make_node("Concat", ["numeric", "categories"], ["y"], axis=1)]
    return _tiny_model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])])


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [
        (
            _label_only,
            "binary",
            r"outputs \[label: int64 \[\?\]\]; a binary model needs an output 'probabilities' or a float output "
            r"of rank 2 .*zipmap",
        ),
        (_label_only, "regression", r"outputs \[label: int64 \[\?\]\]; a regression model needs a float output"),
        (
            _two_inputs,
            "binary",
            r"inputs \[a: float32 \[\?, 3\], b: float32 \[\?, 2\]\]; the contract needs either 'numeric' "
            r"\(float32\) and 'categories' \(int64\), or one float32 input of 5 columns \(3 numeric, then 2 "
            r"category indices\)",
        ),
        (
            lambda: _identity(4, 4),
            "binary",
            r"inputs \[features: float32 \[\?, 4\]\]; .* one float32 input of 5 columns",
        ),
        (lambda: _identity(5, 5), "regression", r"regression output y: float32 \[\?, 5\] is not one value a row"),
        (_float_categories, "binary", r"input categories: float32 \[\?, 2\] must be int64"),
    ],
    ids=[
        "no-probabilities",
        "no-float-output",
        "two-other-inputs",
        "wrong-width",
        "regression-columns",
        "float-categories",
    ],
)
def test_a_model_the_contract_cannot_be_made_of_is_refused_naming_what_it_has(model, task, message) -> None:
    with pytest.raises(ExportError, match=message):
        to_contract(model(), task, NUMERIC, CATEGORICAL)


def test_a_model_onnxruntime_cannot_load_is_refused() -> None:
    broken = _linear_regression(1.0)
    broken.graph.node[0].op_type = "NoSuchOperator"

    with pytest.raises(ExportError, match="onnxruntime cannot load the ONNX model"):
        run_onnx(
            to_contract(broken, "regression", NUMERIC, CATEGORICAL),
            np.zeros((1, NUMERIC)),
            np.zeros((1, CATEGORICAL)),
            "regression",
        )
