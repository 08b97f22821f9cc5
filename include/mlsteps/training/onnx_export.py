"""Every family's model ends as one ONNX model with the same inputs and output, checked against the native model.

Converters (onnxmltools for XGBoost, skl2onnx for scikit-learn) make models with one float input, the numeric
columns then the category indices (``TrainingData.features``), and several outputs (``label`` and
``probabilities``, or ``variable``). ``to_contract`` rewrites such a model to the contract of
``mlsteps.evaluation.tasks``: inputs ``numeric`` (float32) and ``categories`` (int64), one output
``probabilities`` (rows x classes) or ``prediction`` (rows). ``check_export`` then runs it in onnxruntime on the
validation rows and refuses it when it does not reproduce the trained model, so what evaluation, serving and
monitoring run is what was trained.

Tolerances (``default_tolerance``). Exports differ from the native model only by float32 rounding: the order in
which tree leaves or matrix products are summed, and a sigmoid or softmax in float32 instead of float64: about
1e-7 on a probability for the tree models here (XGBoost, scikit-learn). A broken export (a missing tree, columns
in another order, another class order, a truncated ensemble) is typically off by 1e-2 or more.

- Probabilities: ``PROBABILITY_TOLERANCE`` = 1e-4, absolute. Probabilities lie in [0, 1], so one absolute bound
  fits every model; it sits well above the rounding and far below any change a metric would show.
- Regression: ``REGRESSION_TOLERANCE`` = 1e-4, relative: a row passes when ``|onnx - native| <= 1e-4 * max(1,
  |native|)``. Values are in the target's units, and float32 keeps about 7 significant digits, so an absolute
  bound would refuse a sound export of a target in the millions; the floor of 1 keeps values near zero from
  demanding more than float32 can give.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from mlsteps.errors import StepError
from mlsteps.evaluation.tasks import ONNX_INPUTS, PROBABILITIES, is_classification, onnx_output

PROBABILITY_TOLERANCE = 1e-4
REGRESSION_TOLERANCE = 1e-4
# The standard-domain operators added here (Cast, Concat, Reshape, Identity) are unchanged since opset 13; used
# only when the converter imported no standard opset (onnxmltools' XGBoost models import ai.onnx.ml alone).
ADDED_OPSET = 13
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_NUMERIC, _CATEGORIES = ONNX_INPUTS


class ExportError(StepError):
    """The ONNX export cannot serve as the model: wrong inputs or outputs, or it does not reproduce the model."""


@dataclass(frozen=True)
class ExportCheck:
    """A passed check of the export against the native model.

    Attributes:
        max_abs_difference: the largest absolute difference between the ONNX and the native output.
        rows: rows compared.
        tolerance: the tolerance applied (absolute for probabilities, relative to max(1, |value|) for regression).
    """

    max_abs_difference: float
    rows: int
    tolerance: float


def default_tolerance(task: str) -> float:
    """The tolerance ``check_export`` applies for the task (see the module docstring for why)."""
    return PROBABILITY_TOLERANCE if is_classification(task) else REGRESSION_TOLERANCE


def to_contract(model: onnx.ModelProto, task: str, numeric_columns: int, categorical_columns: int) -> onnx.ModelProto:
    """A copy of ``model`` with the contract's inputs and its one output.

    Args:
        model: the family's export, with either the inputs ``numeric`` (float32) and ``categories`` (int64), or
            one float32 input of ``numeric_columns + categorical_columns`` columns (numeric columns, then the
            category indices as floats); the latter is fed by a Cast of ``categories`` and a Concat.
        task: the model's task; decides the output kept: classification takes the output ``probabilities``, or
            else the first float output of rank 2; regression takes the first float output, flattened to rows.
            Every other output (e.g. ``label``) is dropped.
        numeric_columns: width of ``numeric``.
        categorical_columns: width of ``categories``.

    Returns:
        The model with inputs ``numeric``/``categories`` and the output ``onnx_output(task)`` (float32).

    Raises:
        ExportError: no such inputs or output; the message lists what the model has.
    """
    contract = onnx.ModelProto()
    contract.CopyFrom(model)
    graph = contract.graph
    added_nodes = _contract_inputs(graph, numeric_columns, categorical_columns)
    added_nodes |= _contract_output(graph, task)
    if added_nodes and not any(opset.domain in ("", "ai.onnx") for opset in contract.opset_import):
        contract.opset_import.append(helper.make_opsetid("", ADDED_OPSET))
        contract.ir_version = max(
            contract.ir_version, helper.find_min_ir_version_for(contract.opset_import, ignore_unknown=True)
        )
    return contract


def run_onnx(
    model_or_path: onnx.ModelProto | str | Path, numeric: np.ndarray, categories: np.ndarray, task: str
) -> np.ndarray:
    """The contract model's raw output on the rows, as float64: rows x classes, or rows (regression).

    Raises:
        ExportError: onnxruntime cannot load the model, or it lacks the task's output.
    """
    import onnxruntime

    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    try:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    # onnxruntime's errors (Fail, InvalidGraph, NoSuchFile, ...) derive from Exception and nothing narrower.
    except Exception as error:
        raise ExportError(f"onnxruntime cannot load the ONNX model: {error}") from error
    name = onnx_output(task)
    outputs = [output.name for output in session.get_outputs()]
    if name not in outputs:
        raise ExportError(f"the ONNX model has outputs {outputs}, not the {task} contract's {name!r}")
    feeds = {
        _NUMERIC: np.ascontiguousarray(numeric, dtype=np.float32),
        _CATEGORIES: np.ascontiguousarray(categories, dtype=np.int64),
    }
    raw = np.asarray(session.run([name], feeds)[0], dtype=np.float64)
    return raw if is_classification(task) else raw.reshape(-1)


def check_export(
    model: onnx.ModelProto | str | Path,
    native_output: np.ndarray,
    numeric: np.ndarray,
    categories: np.ndarray,
    task: str,
    tolerance: float | None = None,
    *,
    family: str = "the model",
) -> ExportCheck:
    """Check that the contract model reproduces the native model's predictions on the rows.

    Args:
        model: the contract model (``to_contract``'s result) or its file.
        native_output: the trainer's ``predict`` on the same rows.
        numeric: the rows' numeric matrix.
        categories: the rows' category indices.
        task: the model's task.
        tolerance: the bound (``default_tolerance(task)`` when None): absolute for probabilities, relative to
            ``max(1, |native value|)`` for regression.
        family: the model family, named in the message.

    Returns:
        The largest difference found and the bound it met.

    Raises:
        ExportError: no rows, the shapes differ, an output is not finite, or a difference is above the bound.
    """
    bound = default_tolerance(task) if tolerance is None else tolerance
    refused = f"the ONNX export of {family} does not reproduce the native model"
    native = np.asarray(native_output, dtype=np.float64)
    if not is_classification(task):
        native = native.reshape(-1)
    if len(native) == 0:
        raise ExportError(f"{refused}: there are no rows to compare it on; not registered")
    exported = run_onnx(model, numeric, categories, task)
    if exported.shape != native.shape:
        raise ExportError(
            f"{refused}: it outputs shape {exported.shape} where the native model predicts {native.shape}; "
            "not registered"
        )
    difference = np.abs(exported - native).reshape(len(native), -1).max(axis=1)
    scale = np.ones_like(difference) if is_classification(task) else np.maximum(1.0, np.abs(native))
    excess = np.where(np.isfinite(difference), difference / scale, np.inf)
    worst = int(np.argmax(excess))
    if excess[worst] > bound:
        relative = "" if is_classification(task) else f" relative to max(1, |{native[worst]:.6g}|)"
        raise ExportError(
            f"{refused}: largest difference {difference[worst]:.3g} at row {worst} (tolerance {bound:g}{relative}); "
            "not registered"
        )
    return ExportCheck(max_abs_difference=float(difference.max()), rows=len(native), tolerance=bound)


def _contract_inputs(graph: onnx.GraphProto, numeric_columns: int, categorical_columns: int) -> bool:
    """Give the graph the inputs ``numeric`` and ``categories``; whether nodes were added."""
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if {value.name for value in inputs} == set(ONNX_INPUTS):
        for value in inputs:
            expected = TensorProto.FLOAT if value.name == _NUMERIC else TensorProto.INT64
            if value.type.tensor_type.elem_type != expected:
                raise ExportError(f"the ONNX model's input {_describe(value)} must be {_type_name(expected)}")
        return False
    width = numeric_columns + categorical_columns
    single = inputs[0] if len(inputs) == 1 else None
    dims = _dims(single) if single else None
    if (
        single is None
        or single.type.tensor_type.elem_type != TensorProto.FLOAT
        or (dims is not None and (len(dims) != 2 or dims[1] not in (None, width)))
    ):
        raise ExportError(
            f"the ONNX model has inputs [{', '.join(_describe(value) for value in inputs)}]; the contract needs "
            f"either {_NUMERIC!r} (float32) and {_CATEGORIES!r} (int64), or one float32 input of {width} columns "
            f"({numeric_columns} numeric, then {categorical_columns} category indices)"
        )
    _free(graph, *ONNX_INPUTS)  # renames ``single`` in place too, should the converter have called it so
    as_float = _fresh(graph, "categories_as_float")
    feed = [
        helper.make_node("Cast", [_CATEGORIES], [as_float], to=TensorProto.FLOAT),
        helper.make_node("Concat", [_NUMERIC, as_float], [single.name], axis=1),
    ]
    graph.input.remove(single)
    graph.input.extend(
        [
            helper.make_tensor_value_info(_NUMERIC, TensorProto.FLOAT, [None, numeric_columns]),
            helper.make_tensor_value_info(_CATEGORIES, TensorProto.INT64, [None, categorical_columns]),
        ]
    )
    nodes = [*feed, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _contract_output(graph: onnx.GraphProto, task: str) -> bool:
    """Keep the one output of the task, as float32 under the contract's name; whether nodes were added."""
    name = onnx_output(task)
    chosen = _task_output(graph, task)
    dims = _dims(chosen)
    classification = is_classification(task)
    if not classification and dims is not None and (len(dims) > 2 or (len(dims) == 2 and dims[1] not in (1, None))):
        raise ExportError(f"the ONNX model's regression output {_describe(chosen)} is not one value a row")
    steps: list[tuple[str, dict[str, int]]] = []
    if chosen.type.tensor_type.elem_type != TensorProto.FLOAT:
        steps.append(("Cast", {"to": TensorProto.FLOAT}))
    if not classification and (dims is None or len(dims) != 1):
        steps.append(("Reshape", {}))
    if chosen.name != name or steps:
        source = _free(graph, name).get(chosen.name, chosen.name)
        chain = steps or [("Identity", {})]
        for position, (op, attributes) in enumerate(chain):
            target = name if position == len(chain) - 1 else _fresh(graph, name)
            inputs = [source]
            if op == "Reshape":
                inputs.append(_fresh(graph, "rows"))
                graph.initializer.append(helper.make_tensor(inputs[1], TensorProto.INT64, [1], [-1]))
            graph.node.append(helper.make_node(op, inputs, [target], **attributes))
            source = target
    columns = dims[1] if classification and dims is not None else None
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, columns] if classification else [None])
    )
    return chosen.name != name or bool(steps)


def _task_output(graph: onnx.GraphProto, task: str) -> onnx.ValueInfoProto:
    """A copy of the graph output that holds the task's values (the graph's outputs get replaced)."""
    floats = [value for value in graph.output if value.type.tensor_type.elem_type in _FLOATS]
    if is_classification(task):
        named = [value for value in floats if value.name == PROBABILITIES]
        candidates = named or [value for value in floats if _dims(value) is None or len(_dims(value)) == 2]
        wanted = f"an output {PROBABILITIES!r} or a float output of rank 2 (rows x classes)"
        hint = " (skl2onnx: convert with options={'zipmap': False})"
    else:
        candidates, wanted, hint = floats, "a float output (rows, or rows x 1)", ""
    if not candidates:
        raise ExportError(
            f"the ONNX model has outputs [{', '.join(_describe(value) for value in graph.output)}]; a {task} model "
            f"needs {wanted}{hint}"
        )
    chosen = onnx.ValueInfoProto()
    chosen.CopyFrom(candidates[0])
    return chosen


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """The declared shape (None for a dimension without a fixed size), or None when none is declared."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]


def _type_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "not a tensor"


def _describe(value: onnx.ValueInfoProto) -> str:
    """``name: dtype [rows, columns]``, as messages show an input or output."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return f"{value.name}: {kind}"
    dims = _dims(value)
    shape = "" if dims is None else " [" + ", ".join("?" if dim is None else str(dim) for dim in dims) + "]"
    return f"{value.name}: {_type_name(value.type.tensor_type.elem_type)}{shape}"


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and its subgraphs (If/Loop bodies), which may use the outer graph's tensors."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _graphs(subgraph)


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for part in _graphs(graph):
        names.update(value.name for value in [*part.input, *part.output, *part.value_info, *part.initializer])
        for node in part.node:
            names.update(node.input)
            names.update(node.output)
    return names


def _fresh(graph: onnx.GraphProto, base: str) -> str:
    """A tensor name the graph does not use yet."""
    used = _tensor_names(graph)
    return next(f"{base}_{suffix}" for suffix in range(len(used) + 1) if f"{base}_{suffix}" not in used)


def _free(graph: onnx.GraphProto, *names: str) -> dict[str, str]:
    """Rename the graph's tensors called ``names`` (the contract's names) to fresh names; the renames done."""
    renames = {name: _fresh(graph, name) for name in names if name in _tensor_names(graph)}
    for part in _graphs(graph):
        for value in [*part.input, *part.output, *part.value_info, *part.initializer]:
            value.name = renames.get(value.name, value.name)
        for node in part.node:
            node.input[:] = [renames.get(tensor, tensor) for tensor in node.input]
            node.output[:] = [renames.get(tensor, tensor) for tensor in node.output]
    return renames
