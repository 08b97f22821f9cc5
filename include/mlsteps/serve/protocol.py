"""Request parsing for the model server: Open Inference Protocol v2 and MLflow's scoring format.

Both formats become the same thing, one typed array per model column (``ParsedRequest``), which the model
consumes through ``TabularPreprocessor.transform_columns``. The checks run on plain Python lists with set
operations (``set(map(type, values))``), so a one-row request is parsed in microseconds, without pydantic
models or DataFrames. Every problem is a ``RequestError`` whose message names the column and the value.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NUMERIC_TYPES = ("double", "float", "long", "integer", "boolean")
# Every inference answer names the version that computed it (the deploy smoke test checks it).
MODEL_VERSION_HEADER = "x-model-version"
# MLflow column type -> the v2 datatype the server announces for it in the model metadata.
V2_DATATYPE = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
}
# The JSON values each v2 datatype carries; null is allowed everywhere (the preprocessor imputes it).
_V2_VALUE_TYPES: dict[str, frozenset[type]] = {
    "FP64": frozenset({int, float}),
    "FP32": frozenset({int, float}),
    "INT64": frozenset({int}),
    "INT32": frozenset({int}),
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
}
_NULL = type(None)


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP code and ``reason`` the metrics label."""

    def __init__(self, message: str, status: int = 400, reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ColumnRule:
    """What one model column accepts."""

    name: str
    type: str  # MLflow type
    numeric: bool
    datatypes: frozenset[str]  # accepted v2 datatypes
    value_types: frozenset[type]  # accepted JSON value types in the MLflow scoring format (null aside)


@dataclass(frozen=True)
class ParsedRequest:
    """A request's rows as one array per model column: float64 (NaN for null) or object (str or None)."""

    columns: dict[str, np.ndarray]
    rows: int
    request_id: str | None = None


class RequestSchema:
    """The model's request columns and the rules each one enforces, built once per loaded model."""

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        """Build the rules.

        Args:
            columns: ``(name, MLflow type)`` per request column, in signature order.
        """
        self.rules: dict[str, ColumnRule] = {}
        for name, mlflow_type in columns:
            numeric = mlflow_type in NUMERIC_TYPES
            if mlflow_type == "boolean":
                datatypes, values = frozenset({"BOOL"}), frozenset({bool})
            elif numeric:
                datatypes, values = frozenset({"FP64", "FP32", "INT64", "INT32"}), frozenset({int, float})
            else:
                datatypes, values = frozenset({"BYTES"}), frozenset({str})
            self.rules[name] = ColumnRule(name, mlflow_type, numeric, datatypes, values)
        self.names = list(self.rules)

    def metadata_inputs(self) -> list[dict[str, Any]]:
        """The v2 metadata of the inputs: one tensor per column."""
        return [
            {"name": r.name, "datatype": V2_DATATYPE.get(r.type, "BYTES"), "shape": [-1]} for r in self.rules.values()
        ]

    def check_names(self, names: Sequence[str], what: str) -> None:
        """Raise one error that names every unknown and every missing column."""
        unknown = [name for name in names if name not in self.rules]
        missing = [name for name in self.names if name not in names]
        problems = []
        if unknown:
            problems.append(f"unknown {what}(s) {unknown}")
        if missing:
            problems.append(f"missing {what}(s) {missing}")
        if problems:
            raise RequestError(
                f"{' and '.join(problems)}: send exactly the model's columns {self.names} (null values are allowed)"
            )

    def typed(self, rule: ColumnRule, values: Sequence[Any], allowed: frozenset[type], what: str) -> np.ndarray:
        """One column's values as an array, after checking that each is null or of an allowed JSON type."""
        found = set(map(type, values))
        found.discard(_NULL)
        if not found <= allowed:
            bad = next(value for value in values if type(value) not in allowed and value is not None)
            expected = " or ".join(sorted(t.__name__ for t in allowed))
            raise RequestError(
                f"{what} {rule.name!r} holds {type(bad).__name__} value {bad!r}; column {rule.name!r} is {rule.type}: "
                f"send {expected} values or null"
            )
        return np.array(values, dtype=np.float64 if rule.numeric else object)


def _reject_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number: send null for a missing value")


def load_json(body: bytes) -> Any:
    """Parse a request body; NaN and Infinity are refused, as JSON has no such numbers.

    Raises:
        RequestError: the body is not valid JSON.
    """
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


def _rows_of_shape(name: str, shape: Any) -> int:
    valid = type(shape) is list and set(map(type, shape)) == {int} and (len(shape) == 1 or shape[1:] == [1])
    if not valid or shape[0] < 0:
        raise RequestError(
            f"input {name!r} has shape {shape!r}: send shape [rows] or [rows, 1] (one tensor per column)"
        )
    return shape[0]


def _flat_data(name: str, data: Any, rows: int) -> list[Any]:
    """The tensor's values as a flat list; ``[[v], [v]]`` (shape [rows, 1], row-major nested) is flattened."""
    if type(data) is not list:
        raise RequestError(f"input {name!r} has data of type {type(data).__name__}: send a JSON list of values")
    if data and type(data[0]) is list:
        if set(map(type, data)) != {list} or set(map(len, data)) != {1}:
            raise RequestError(f"input {name!r} has nested data that is not one value per row: send [v, ...]")
        data = list(itertools.chain.from_iterable(data))
    if len(data) != rows:
        raise RequestError(f"input {name!r} has {len(data)} value(s) for its shape's {rows} row(s)")
    return data


def _single_row_count(counts: Mapping[str, int]) -> int:
    distinct = set(counts.values())
    if len(distinct) > 1:
        raise RequestError(f"columns have different row counts {dict(counts)}: send one value per row in each")
    rows = distinct.pop() if distinct else 0
    if rows == 0:
        raise RequestError("the request has no rows: send at least one value per column")
    return rows


def _refuse_repeats(names: list[Any], what: str) -> None:
    if len(set(names)) != len(names):
        repeated = sorted({str(name) for name in names if names.count(name) > 1})
        raise RequestError(f"{what}(s) {repeated} appear more than once: send each column once")


def parse_v2(body: bytes, schema: RequestSchema) -> ParsedRequest:
    """Parse an Open Inference Protocol v2 inference request: one input tensor per column.

    Raises:
        RequestError: naming the input and what is wrong with its name, datatype, shape or values.
    """
    payload = load_json(body)
    inputs = payload.get("inputs") if type(payload) is dict else None
    if type(inputs) is not list or set(map(type, inputs)) - {dict}:
        raise RequestError('request body must be a JSON object with "inputs": a list of tensors, one per column')
    names = [tensor.get("name") for tensor in inputs]
    _refuse_repeats(names, "input")
    schema.check_names(names, "input")
    columns: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for tensor in inputs:
        name = tensor["name"]
        rule = schema.rules[name]
        datatype = tensor.get("datatype")
        if datatype not in rule.datatypes:
            raise RequestError(
                f"input {name!r} has datatype {datatype!r}; column {name!r} is {rule.type}: "
                f"send datatype {' or '.join(sorted(rule.datatypes))}"
            )
        counts[name] = rows = _rows_of_shape(name, tensor.get("shape"))
        columns[name] = schema.typed(
            rule, _flat_data(name, tensor.get("data"), rows), _V2_VALUE_TYPES[datatype], f"input ({datatype})"
        )
    request_id = payload.get("id")
    return ParsedRequest(columns, _single_row_count(counts), None if request_id is None else str(request_id))


def parse_records(records: Any, schema: RequestSchema) -> ParsedRequest:
    """Parse rows given as ``[{column: value, ...}, ...]``; a key absent from a row is null there.

    Raises:
        RequestError: the rows are not objects, or a column is unknown, missing everywhere or of a wrong type.
    """
    if type(records) is not list or set(map(type, records)) - {dict}:
        raise RequestError('"dataframe_records" must be a list of objects, one per row: [{"column": value, ...}]')
    present = set().union(*records)
    schema.check_names(
        [*(name for name in schema.names if name in present), *sorted(present - schema.rules.keys())], "column"
    )
    columns = {
        name: schema.typed(rule, [row.get(name) for row in records], rule.value_types, "column")
        for name, rule in schema.rules.items()
    }
    return ParsedRequest(columns, _single_row_count(dict.fromkeys(columns, len(records))))


def _parse_split(split: Any, schema: RequestSchema) -> ParsedRequest:
    names = split.get("columns") if type(split) is dict else None
    data = split.get("data") if type(split) is dict else None
    if type(names) is not list or type(data) is not list or set(map(type, data)) - {list}:
        raise RequestError('"dataframe_split" must be {"columns": [names], "data": [[row values], ...]}')
    _refuse_repeats(names, "dataframe_split column")
    schema.check_names(names, "column")
    wrong_length = [index for index, row in enumerate(data) if len(row) != len(names)]
    if wrong_length:
        row = wrong_length[0]
        raise RequestError(
            f"dataframe_split row {row} has {len(data[row])} value(s) for {len(names)} column(s): "
            "send one value per column in every row"
        )
    by_name = dict(zip(names, zip(*data, strict=True), strict=True)) if data else dict.fromkeys(names, ())
    columns = {
        name: schema.typed(rule, by_name[name], rule.value_types, "column") for name, rule in schema.rules.items()
    }
    return ParsedRequest(columns, _single_row_count(dict.fromkeys(columns, len(data))))


def parse_mlflow(body: bytes, schema: RequestSchema) -> ParsedRequest:
    """Parse MLflow's scoring format: ``{"dataframe_split": ...}`` or ``{"dataframe_records": [...]}``.

    Raises:
        RequestError: another format, or a problem naming the column or row.
    """
    payload = load_json(body)
    if type(payload) is dict and "dataframe_split" in payload:
        return _parse_split(payload["dataframe_split"], schema)
    if type(payload) is dict and "dataframe_records" in payload:
        return parse_records(payload["dataframe_records"], schema)
    keys = sorted(payload) if type(payload) is dict else type(payload).__name__
    raise RequestError(
        f'request body must be {{"dataframe_split": {{"columns": [...], "data": [[...]]}}}} or '
        f'{{"dataframe_records": [{{...}}]}}; got {keys}'
    )
