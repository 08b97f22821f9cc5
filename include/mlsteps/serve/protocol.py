"""Request parsing for the model server: Open Inference Protocol v2 and MLflow's scoring format.

Both formats become the same thing, one typed array per model column (``ParsedRequest``), which the model
consumes through ``TabularPreprocessor.transform_columns``. The checks run on plain Python lists with set
operations (``set(map(type, values))``), so a one-row request is parsed in microseconds, without pydantic
models or DataFrames. Every problem is a ``RequestError`` whose message names the column and the value.

v2 requests come as JSON or with the binary tensor data extension (a JSON header of ``Inference-Header-Content-Length``
bytes, then each tensor's raw bytes in input order); both give the same arrays and go through the same checks.
JSON's ``NaN`` token is read as a missing value, as MLflow's scoring server reads it; infinities are refused with
the column and row named (``RequestSchema.out_of_range``).
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
# Binary tensor data extension: the JSON header's length, and the layout of fixed-size datatypes (little-endian).
HEADER_LENGTH_HEADER = "inference-header-content-length"
_BINARY_DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}
# A string column accepts values up to this many characters, or twice its longest training category if longer.
MIN_STRING_LENGTH = 64
_LARGEST = np.finfo(np.float64).max


@dataclass(frozen=True)
class RequestPolicy:
    """How requests are read, from the pipeline config (``serving`` and ``dataset`` sections)."""

    strict_columns: bool = False  # refuse MLflow-format columns the model does not use (else ignore and count them)
    id_column: str | None = None  # the dataset's id column: a row that carries it is logged under that id
    max_string_length: int | None = None  # None: from the training categories (see MIN_STRING_LENGTH)
    # Per numeric column, the (min, max) the training data lay within; None: no bound on that side.
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)


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
    row_ids: list[Any] | None = None  # per row, the dataset's id column when the rows carry it (None: missing)
    ignored: tuple[str, ...] = ()  # columns the request sent that the model does not use
    outputs: tuple[tuple[str, bool], ...] | None = None  # v2: (output, as binary); None: every output as JSON


class RequestSchema:
    """The model's request columns and the rules each one enforces, built once per loaded model."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        policy: RequestPolicy | None = None,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        outputs: Sequence[str] = (),
    ) -> None:
        """Build the rules.

        Args:
            columns: ``(name, MLflow type)`` per request column, in signature order.
            policy: how strictly to read requests; None: the defaults of ``RequestPolicy``.
            vocabularies: the training categories per string column, which set its length limit.
            outputs: the model's v2 outputs in answer order, which a request may name in ``"outputs"``.
        """
        self.policy = policy or RequestPolicy()
        self.outputs = tuple(outputs)
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
        self.longest_category = {
            name: max(map(len, (vocabularies or {}).get(name, ())), default=0)
            for name, rule in self.rules.items()
            if not rule.numeric
        }
        self.max_length = {
            name: self.policy.max_string_length or max(MIN_STRING_LENGTH, 2 * longest)
            for name, longest in self.longest_category.items()
        }
        # Numeric columns with their training bounds, as arrays for one vectorised check per request. A column
        # without a bound gets the largest float, so that infinities are caught by the same comparison.
        self.numeric_names = [name for name, rule in self.rules.items() if rule.numeric]
        bounds = [self.policy.bounds.get(name, (None, None)) for name in self.numeric_names]
        self.lows = np.array([[-_LARGEST if low is None else low] for low, _ in bounds], dtype=np.float64)
        self.highs = np.array([[_LARGEST if high is None else high] for _, high in bounds], dtype=np.float64)

    def metadata_inputs(self) -> list[dict[str, Any]]:
        """The v2 metadata of the inputs: one tensor per column."""
        return [
            {"name": r.name, "datatype": V2_DATATYPE.get(r.type, "BYTES"), "shape": [-1]} for r in self.rules.values()
        ]

    def check_names(self, names: Sequence[str], what: str, *, ignore_unknown: bool = False) -> list[str]:
        """Raise one error that names every missing (and, unless ignored, every unknown) column.

        Returns:
            The unknown names, in request order (only ever non-empty with ``ignore_unknown``).
        """
        unknown = [name for name in names if name not in self.rules]
        missing = [name for name in self.names if name not in names]
        problems = []
        if unknown and not ignore_unknown:
            problems.append(f"unknown {what}(s) {unknown}")
        if missing:
            problems.append(f"missing {what}(s) {missing}")
        if problems:
            hint = (
                " or set serving.strict_columns: false to ignore extra columns" if unknown and what == "column" else ""
            )
            raise RequestError(
                f"{' and '.join(problems)}: send exactly the model's columns {self.names} (null values are allowed)"
                f"{hint if not missing else ''}"
            )
        return unknown

    def typed(self, rule: ColumnRule, values: Sequence[Any], allowed: frozenset[type], what: str) -> np.ndarray:
        """One column's values as an array, after checking that each is null or of an allowed JSON type.

        ``NaN`` is a missing value (NaN in a numeric column, None in a string column), as MLflow's scoring server
        reads it; strings longer than the column's limit are refused.
        """
        found = set(map(type, values))
        found.discard(_NULL)
        if float in found and not rule.numeric:
            values = [None if type(value) is float and value != value else value for value in values]
            found = set(map(type, values))
            found.discard(_NULL)
        if not found <= allowed:
            bad = next(value for value in values if type(value) not in allowed and value is not None)
            expected = " or ".join(sorted(t.__name__ for t in allowed))
            raise RequestError(
                f"{what} {rule.name!r} holds {type(bad).__name__} value {bad!r}; column {rule.name!r} is {rule.type}: "
                f"send {expected} values or null"
            )
        if rule.numeric:
            return np.array(values, dtype=np.float64)
        if found:
            limit = self.max_length[rule.name]
            if max(map(len, filter(None, values)), default=0) > limit:
                row = next(row for row, value in enumerate(values) if value is not None and len(value) > limit)
                raise RequestError(
                    f"{what} {rule.name!r} row {row} holds a string of {len(values[row])} characters "
                    f"({values[row][:20]!r}...), over the limit of {limit} (the longest category seen in training "
                    f"has {self.longest_category[rule.name]}): send the category itself, or raise "
                    "serving.max_string_length"
                )
        return np.array(values, dtype=object)

    def out_of_range(self, request: ParsedRequest) -> np.ndarray | None:
        """Which numeric values lie outside the range seen in training (rows x ``numeric_names``), or None.

        Raises:
            RequestError: a value is infinite (naming the column and the row).
        """
        if not self.numeric_names:
            return None
        columns = request.columns
        # One array of (columns x rows): np.array of a list is the cheapest stack for a request of a few rows.
        numbers = np.array([columns[name] for name in self.numeric_names])
        outside = (numbers < self.lows) | (numbers > self.highs)  # NaN (missing) compares False: never outside
        if not outside.any():
            return None
        infinite = np.argwhere(np.isinf(numbers))
        if len(infinite):
            position, row = (int(i) for i in infinite[0])
            name = self.numeric_names[position]
            raise RequestError(
                f"column {name!r} row {row} is {numbers[position, row]}: send a finite number, or null (NaN) for a "
                "missing value"
            )
        return outside.T

    def describe_outside(self, outside: np.ndarray | None, request: ParsedRequest, row: int) -> str:
        """The inputs of ``row`` that lie outside the training range, as ``name=value (training range a to b)``."""
        if outside is None or not outside[row].any():
            return "none of its inputs lies outside the range seen in training"
        parts = []
        for position in np.flatnonzero(outside[row]):
            name = self.numeric_names[position]
            low, high = self.policy.bounds.get(name, (None, None))
            low, high = ("-inf" if low is None else f"{low:g}", "inf" if high is None else f"{high:g}")
            parts.append(f"{name}={request.columns[name][row]:g} (training range {low} to {high})")
        return "inputs outside the range seen in training: " + ", ".join(parts)


def load_json(body: bytes | memoryview) -> Any:
    """Parse a request body; ``NaN``, ``Infinity`` and ``-Infinity`` become floats (checked per column later).

    Raises:
        RequestError: the body is not valid JSON.
    """
    try:
        return json.loads(bytes(body) if type(body) is memoryview else body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


def body_format(content_type: str | None, header_length: str | None, binary: bool) -> int | None:
    """How to read a request body: None for JSON, else the length of the JSON header (binary tensor data).

    Args:
        content_type: the Content-Type header; absent means JSON, as clients of the v2 protocol send it.
        header_length: the ``Inference-Header-Content-Length`` header.
        binary: whether the endpoint takes the binary tensor data extension.

    Raises:
        RequestError: 415 for a body that is neither JSON nor the binary extension, 400 for a bad header length.
    """
    if header_length is not None and binary:
        if not header_length.isdigit():
            raise RequestError(
                f"Inference-Header-Content-Length is {header_length!r}: send the JSON header's length in bytes"
            )
        return int(header_length)
    if content_type is None:
        return None
    mime, _, parameters = content_type.partition(";")
    mime = mime.strip().lower()
    charset = parameters.partition("charset=")[2].strip().strip('"').lower()
    if (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))) and (
        charset in ("", "utf-8", "utf8")
    ):
        return None
    also = " or the binary tensor data extension (Inference-Header-Content-Length)" if binary else ""
    raise RequestError(
        f"content type {content_type!r} is not supported: send JSON (Content-Type: application/json, UTF-8){also}",
        415,
        "unsupported_media_type",
    )


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


def _binary_values(name: str, datatype: str, chunk: memoryview, rows: int) -> list[Any] | np.ndarray:
    """A tensor's values from its bytes in the binary tensor data extension.

    Raises:
        RequestError: the size does not fit the shape and datatype, or a BYTES value is cut short or not UTF-8.
    """
    if datatype != "BYTES":
        dtype = np.dtype(_BINARY_DTYPES[datatype])
        if len(chunk) != rows * dtype.itemsize:
            raise RequestError(
                f"input {name!r} has {len(chunk)} bytes of binary data; its shape's {rows} row(s) of {datatype} take "
                f"{rows * dtype.itemsize}: send binary_data_size = rows x {dtype.itemsize}"
            )
        return np.frombuffer(chunk, dtype).astype(np.float64)
    values: list[Any] = []
    offset, end = 0, len(chunk)
    while offset < end:
        if offset + 4 > end:
            raise RequestError(f"input {name!r} row {len(values)}: binary BYTES data ends inside a length prefix")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > end:
            raise RequestError(
                f"input {name!r} row {len(values)} declares {length} bytes, {end - offset} are left: send each value "
                "as a 4-byte little-endian length and that many bytes"
            )
        try:
            values.append(str(chunk[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"input {name!r} row {len(values)} is not UTF-8 text: send categories as text") from None
        offset += length
    if len(values) != rows:
        raise RequestError(f"input {name!r} has {len(values)} value(s) for its shape's {rows} row(s)")
    return values


def _requested_outputs(payload: dict[str, Any], names: tuple[str, ...]) -> tuple[tuple[str, bool], ...] | None:
    """The outputs to answer with and whether each goes as binary data; None: every output as JSON.

    ``parameters.binary_data_output`` sets the default of outputs without their own ``binary_data``.

    Raises:
        RequestError: an output the model does not have (``names``), or outputs that are not a list of objects with
            a name.
    """
    parameters = payload.get("parameters")
    default = type(parameters) is dict and parameters.get("binary_data_output") is True
    outputs = payload.get("outputs")
    if outputs is None:
        return tuple((name, True) for name in names) if default else None
    if type(outputs) is not list or set(map(type, outputs)) - {dict}:
        raise RequestError('"outputs" must be a list of objects: [{"name": "prediction"}, ...]')
    requested = []
    for output in outputs:
        if output.get("name") not in names:
            raise RequestError(f"unknown output {output.get('name')!r}: this model's outputs are {list(names)}")
        settings = output.get("parameters")
        binary = settings.get("binary_data", default) if type(settings) is dict else default
        requested.append((output["name"], binary is True))
    return tuple(requested)


def parse_v2(body: bytes, schema: RequestSchema, header_length: int | None = None) -> ParsedRequest:
    """Parse an Open Inference Protocol v2 inference request: one input tensor per column.

    Args:
        body: the request body.
        schema: the model's columns.
        header_length: with the binary tensor data extension, the length of the JSON header at the start of the
            body; the tensors whose ``parameters.binary_data_size`` is set follow it, in input order.

    Raises:
        RequestError: naming the input and what is wrong with its name, datatype, shape, values or binary data.
    """
    if header_length is None:
        payload, binary = load_json(body), memoryview(b"")
    else:
        if header_length > len(body):
            raise RequestError(
                f"Inference-Header-Content-Length is {header_length}, the body has {len(body)} bytes: send the JSON "
                "header's length"
            )
        view = memoryview(body)
        payload, binary = load_json(view[:header_length]), view[header_length:]
    inputs = payload.get("inputs") if type(payload) is dict else None
    if type(inputs) is not list or set(map(type, inputs)) - {dict}:
        raise RequestError('request body must be a JSON object with "inputs": a list of tensors, one per column')
    names = [tensor.get("name") for tensor in inputs]
    _refuse_repeats(names, "input")
    schema.check_names(names, "input")
    columns: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    offset = 0
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
        parameters = tensor.get("parameters")
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        if size is None:
            values: Any = _flat_data(name, tensor.get("data"), rows)
        else:
            if type(size) is not int or size < 0 or offset + size > len(binary) or "data" in tensor:
                raise RequestError(
                    f"input {name!r} declares binary_data_size {size!r}, {len(binary) - offset} bytes of binary data "
                    'are left: send the tensor\'s exact byte size, its bytes after the JSON header, and no "data"'
                )
            values = _binary_values(name, datatype, binary[offset : offset + size], rows)
            offset += size
        if type(values) is np.ndarray:
            columns[name] = values
        else:
            columns[name] = schema.typed(rule, values, _V2_VALUE_TYPES[datatype], f"input ({datatype})")
    if offset != len(binary):
        raise RequestError(
            f"the body has {len(binary)} bytes after the JSON header, the inputs' binary_data_size add up to {offset}: "
            "send each binary tensor once, in input order"
        )
    request_id = payload.get("id")
    return ParsedRequest(
        columns,
        _single_row_count(counts),
        None if request_id is None else str(request_id),
        outputs=_requested_outputs(payload, schema.outputs),
    )


def _row_ids(values: Sequence[Any]) -> list[Any]:
    """The id column's values, None where a row has none (null or NaN)."""
    return [None if value is None or (type(value) is float and value != value) else value for value in values]


def _known_names(schema: RequestSchema, names: Sequence[str]) -> tuple[str, ...]:
    """Check the column names of an MLflow-format request; returns the ignored ones (the id column is read)."""
    policy = schema.policy
    unknown = schema.check_names(
        [name for name in names if name != policy.id_column], "column", ignore_unknown=not policy.strict_columns
    )
    return tuple(unknown)


def parse_records(records: Any, schema: RequestSchema) -> ParsedRequest:
    """Parse rows given as ``[{column: value, ...}, ...]``; a key absent from a row is null there.

    Columns the model does not use are ignored (``ParsedRequest.ignored``) unless the policy is strict; the
    dataset's id column, when present, gives each row its id.

    Raises:
        RequestError: the rows are not objects, or a column is unknown (strict), missing everywhere or of a wrong
            type.
    """
    if type(records) is not list or set(map(type, records)) - {dict}:
        raise RequestError('"dataframe_records" must be a list of objects, one per row: [{"column": value, ...}]')
    present = set().union(*records)
    ignored = _known_names(
        schema, [*(name for name in schema.names if name in present), *sorted(present - schema.rules.keys())]
    )
    columns = {
        name: schema.typed(rule, [row.get(name) for row in records], rule.value_types, "column")
        for name, rule in schema.rules.items()
    }
    id_column = schema.policy.id_column
    row_ids = _row_ids([row.get(id_column) for row in records]) if id_column in present else None
    return ParsedRequest(
        columns, _single_row_count(dict.fromkeys(columns, len(records))), row_ids=row_ids, ignored=ignored
    )


def _parse_split(split: Any, schema: RequestSchema) -> ParsedRequest:
    names = split.get("columns") if type(split) is dict else None
    data = split.get("data") if type(split) is dict else None
    if type(names) is not list or type(data) is not list or set(map(type, data)) - {list}:
        raise RequestError('"dataframe_split" must be {"columns": [names], "data": [[row values], ...]}')
    _refuse_repeats(names, "dataframe_split column")
    ignored = _known_names(schema, names)
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
    id_column = schema.policy.id_column
    row_ids = _row_ids(by_name[id_column]) if id_column in by_name else None
    return ParsedRequest(
        columns, _single_row_count(dict.fromkeys(columns, len(data))), row_ids=row_ids, ignored=ignored
    )


def parse_mlflow(body: bytes, schema: RequestSchema, header_length: int | None = None) -> ParsedRequest:
    """Parse MLflow's scoring format: ``{"dataframe_split": ...}`` or ``{"dataframe_records": [...]}``.

    Args:
        body: the request body (JSON).
        schema: the model's columns and the request policy.
        header_length: always None (MLflow's format has no binary extension); there for a common signature.

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
