"""Request parsing of the model server: both formats give the same typed columns; bad requests name the problem."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from mlsteps.evaluation.tasks import output_frame
from mlsteps.serve.outputs import TaskOutputs
from mlsteps.serve.protocol import (
    RequestError,
    RequestPolicy,
    RequestSchema,
    body_format,
    parse_mlflow,
    parse_v2,
)

SCHEMA = RequestSchema(
    [("age", "double"), ("devices", "long"), ("plan", "string")], outputs=("probability", "prediction")
)
ROWS = [
    {"age": 41.5, "devices": 2, "plan": "basic"},
    {"age": None, "devices": 3, "plan": None},
]


def _v2(*tensors: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def _tensor(name: str, data: list[Any], datatype: str = "FP64", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


GOOD_TENSORS = (
    _tensor("age", [41.5, None]),
    _tensor("devices", [2, 3], "INT64"),
    _tensor("plan", ["basic", None], "BYTES"),
)


def _assert_rows(columns: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(columns["age"], [41.5, np.nan])
    assert columns["age"].dtype == np.float64
    assert columns["devices"].tolist() == [2.0, 3.0]
    assert columns["plan"].tolist() == ["basic", None]


def test_v2_and_both_mlflow_formats_give_the_same_typed_columns() -> None:
    split = {
        "dataframe_split": {
            "columns": ["plan", "age", "devices"],
            "data": [[r["plan"], r["age"], r["devices"]] for r in ROWS],
        }
    }
    parsed = [
        parse_v2(_v2(*GOOD_TENSORS, id="req-7"), SCHEMA),
        parse_mlflow(json.dumps(split).encode(), SCHEMA),
        parse_mlflow(json.dumps({"dataframe_records": ROWS}).encode(), SCHEMA),
    ]

    for request in parsed:
        assert request.rows == 2
        assert list(request.columns) == ["age", "devices", "plan"]
        _assert_rows(request.columns)
    assert parsed[0].request_id == "req-7"
    assert parsed[1].request_id is None


def test_v2_accepts_rows_by_one_shapes_with_nested_data() -> None:
    tensors = [dict(t, shape=[2, 1], data=[[v] for v in t["data"]]) for t in GOOD_TENSORS]

    _assert_rows(parse_v2(_v2(*tensors), SCHEMA).columns)


def test_a_record_without_a_key_has_null_there() -> None:
    parsed = parse_mlflow(json.dumps({"dataframe_records": [ROWS[0], {"devices": 1}]}).encode(), SCHEMA)

    assert np.isnan(parsed.columns["age"][1])
    assert parsed.columns["plan"].tolist() == ["basic", None]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'["age"]', '"inputs": a list of tensors'),
        (_v2(*GOOD_TENSORS, _tensor("income", [1.0, 2.0])), r"unknown input\(s\) \['income'\]"),
        (_v2(*GOOD_TENSORS[:2]), r"missing input\(s\) \['plan'\]"),
        (_v2(*GOOD_TENSORS, GOOD_TENSORS[0]), r"input\(s\) \['age'\] appear more than once"),
        (
            _v2(_tensor("age", ["41"], "BYTES"), *GOOD_TENSORS[1:]),
            "input 'age' has datatype 'BYTES'.*send datatype FP32 or FP64",
        ),
        (_v2(GOOD_TENSORS[0], GOOD_TENSORS[1], _tensor("plan", [1, 2], "INT64")), "column 'plan' is string"),
        (_v2(_tensor("age", ["old", 1.0]), *GOOD_TENSORS[1:]), "input \\(FP64\\) 'age' holds str value 'old'"),
        (
            _v2(GOOD_TENSORS[0], _tensor("devices", [2.5, 3], "INT64"), GOOD_TENSORS[2]),
            "'devices' holds float value 2.5",
        ),
        (
            _v2(_tensor("age", [1.0, 2.0], shape=[3]), *GOOD_TENSORS[1:]),
            "input 'age' has 2 value\\(s\\) for its shape's 3",
        ),
        (_v2(_tensor("age", [1.0]), *GOOD_TENSORS[1:]), "different row counts \\{'age': 1, 'devices': 2, 'plan': 2\\}"),
        (_v2(*(dict(t, data=[], shape=[0]) for t in GOOD_TENSORS)), "the request has no rows"),
    ],
)
def test_bad_v2_requests_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        parse_v2(body, SCHEMA)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": [1]}, "dataframe_split.*dataframe_records.*got \\['instances'\\]"),
        ({"dataframe_split": {"columns": ["age", "devices"], "data": [[1.0, 2]]}}, r"missing column\(s\) \['plan'\]"),
        (
            {"dataframe_split": {"columns": ["age", "devices", "plan"], "data": [[1.0, 2, "a"], [1.0]]}},
            "row 1 has 1 value",
        ),
        (
            {"dataframe_records": [{"age": "41", "devices": 2, "plan": "a"}]},
            "column 'age' holds str value '41'.*is double",
        ),
        ({"dataframe_records": [{"age": 1.0, "devices": 2, "plan": 7}]}, "column 'plan' holds int value 7"),
        ({"dataframe_records": "rows"}, "must be a list of objects"),
    ],
)
def test_bad_mlflow_requests_name_the_problem(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_mlflow(json.dumps(payload).encode(), SCHEMA)


def test_metadata_announces_one_tensor_per_column() -> None:
    assert SCHEMA.metadata_inputs() == [
        {"name": "age", "datatype": "FP64", "shape": [-1]},
        {"name": "devices", "datatype": "INT64", "shape": [-1]},
        {"name": "plan", "datatype": "BYTES", "shape": [-1]},
    ]


def _binary_body(tensors: list[tuple[str, str, bytes, int]], **extra: Any) -> tuple[bytes, int]:
    """A v2 request in the binary tensor data extension: (name, datatype, raw bytes, rows) per input."""
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": [r], "parameters": {"binary_data_size": len(raw)}}
                for n, d, raw, r in tensors
            ],
            **extra,
        }
    ).encode()
    return header + b"".join(raw for _, _, raw, _ in tensors), len(header)


def _bytes_tensor(*values: str) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_binary_tensors_give_the_same_columns_as_json() -> None:
    body, header_length = _binary_body(
        [
            ("age", "FP64", np.array([41.5, np.nan], "<f8").tobytes(), 2),
            ("devices", "INT64", np.array([2, 3], "<i8").tobytes(), 2),
            ("plan", "BYTES", _bytes_tensor("basic", "basic"), 2),
        ],
        parameters={"binary_data_output": True},
    )

    parsed = parse_v2(body, SCHEMA, header_length)

    np.testing.assert_array_equal(parsed.columns["age"], [41.5, np.nan])
    assert parsed.columns["devices"].tolist() == [2.0, 3.0]
    assert parsed.columns["plan"].tolist() == ["basic", "basic"]
    assert parsed.outputs == (("probability", True), ("prediction", True))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([("age", "FP64", b"\0" * 12, 2)], "input 'age' has 12 bytes of binary data; .* take 16"),
        ([("plan", "BYTES", struct.pack("<I", 9) + b"ab", 1)], "input 'plan' row 0 declares 9 bytes, 2 are left"),
        (
            [("plan", "BYTES", _bytes_tensor("x" * 65), 1)],
            "'plan' row 0 holds a string of 65 characters .*over the limit of 64",
        ),
    ],
)
def test_bad_binary_tensors_name_the_input(tensors: list[tuple[str, str, bytes, int]], message: str) -> None:
    given = {name for name, *_ in tensors}
    rest = [t for t in GOOD_TENSORS if t["name"] not in given]
    body, header_length = _binary_body(tensors)
    header = json.loads(body[:header_length])
    header["inputs"] += [dict(t, shape=[tensors[0][3]], data=t["data"][: tensors[0][3]]) for t in rest]
    head = json.dumps(header).encode()

    with pytest.raises(RequestError, match=message):
        parse_v2(head + body[header_length:], SCHEMA, len(head))


def test_requested_outputs_are_the_models_own() -> None:
    multiclass = RequestSchema([("age", "double")], outputs=("probabilities", "prediction"))
    age = _tensor("age", [41.5])
    asked = [{"name": "prediction", "parameters": {"binary_data": True}}, {"name": "probabilities"}]

    assert parse_v2(_v2(age, outputs=asked), multiclass).outputs == (("prediction", True), ("probabilities", False))
    assert parse_v2(_v2(age), multiclass).outputs is None  # every output, as JSON
    with pytest.raises(RequestError, match=r"unknown output 'probability': .* are \['probabilities', 'prediction'\]"):
        parse_v2(_v2(age, outputs=[{"name": "probability"}]), multiclass)


def test_binary_data_that_does_not_add_up_is_refused() -> None:
    body, header_length = _binary_body([("age", "FP64", np.zeros(1, "<f8").tobytes(), 1)])

    with pytest.raises(RequestError, match="16 bytes after the JSON header.* add up to 8"):
        parse_v2(body + b"\0" * 8, RequestSchema([("age", "double")]), header_length)


def test_nan_is_a_missing_value_and_infinity_is_refused_with_the_column_and_row() -> None:
    records = b'{"dataframe_records": [{"age": NaN, "devices": 2, "plan": NaN}, {"age": Infinity, "devices": 1}]}'

    parsed = parse_mlflow(records, SCHEMA)

    assert np.isnan(parsed.columns["age"][0]) and parsed.columns["plan"].tolist() == [None, None]
    with pytest.raises(RequestError, match="column 'age' row 1 is inf: send a finite number, or null"):
        SCHEMA.out_of_range(parsed)


def test_values_outside_the_training_bounds_are_flagged_and_described() -> None:
    schema = RequestSchema([("age", "double"), ("devices", "long")], RequestPolicy(bounds={"age": (18, 100)}))
    parsed = parse_mlflow(json.dumps({"dataframe_records": [{"age": 1e300, "devices": 2}]}).encode(), schema)

    outside = schema.out_of_range(parsed)

    assert outside is not None and outside.tolist() == [[True, False]]
    assert schema.describe_outside(outside, parsed, 0) == (
        "inputs outside the range seen in training: age=1e+300 (training range 18 to 100)"
    )


def test_extra_columns_are_ignored_unless_strict_and_the_id_column_names_each_row() -> None:
    rows = [{"age": 1.0, "devices": 2, "plan": "a", "zip": "x", "customer_id": 17}, {"age": 2.0, "devices": 1}]
    body = json.dumps({"dataframe_records": rows}).encode()
    split = json.dumps(
        {
            "dataframe_split": {
                "index": [0],
                "columns": ["customer_id", "age", "devices", "plan", "at"],
                "data": [[17, 1.0, 2, "a", "2026-01-01T00:00:00"]],
            }
        }
    ).encode()
    lenient = RequestSchema(
        [("age", "double"), ("devices", "long"), ("plan", "string")], RequestPolicy(id_column="customer_id")
    )
    strict = RequestSchema(
        [("age", "double"), ("devices", "long"), ("plan", "string")],
        RequestPolicy(strict_columns=True, id_column="customer_id"),
    )

    parsed = parse_mlflow(body, lenient)

    assert (parsed.ignored, parsed.row_ids) == (("zip",), [17, None])
    assert (parse_mlflow(split, lenient).ignored, parse_mlflow(split, lenient).row_ids) == (("at",), [17])
    with pytest.raises(RequestError, match=r"unknown column\(s\) \['zip'\].*or set serving.strict_columns: false"):
        parse_mlflow(body, strict)


@pytest.mark.parametrize(
    ("content_type", "header_length", "expected"),
    [
        (None, None, None),
        ("application/json", None, None),
        ("application/json; charset=utf-8", None, None),
        ("application/octet-stream", "12", 12),
        (None, "12", 12),
    ],
)
def test_json_and_the_binary_extension_are_the_formats(
    content_type: str | None, header_length: str | None, expected: int | None
) -> None:
    assert body_format(content_type, header_length, True) == expected


@pytest.mark.parametrize(
    ("content_type", "binary"),
    [("text/plain", True), ("application/json; charset=latin-1", True), ("application/x-www-form-urlencoded", False)],
)
def test_other_content_types_get_415(content_type: str, binary: bool) -> None:
    with pytest.raises(RequestError, match="is not supported: send JSON") as caught:
        body_format(content_type, "12" if not binary else None, binary)
    assert caught.value.status == 415


@pytest.mark.parametrize(
    ("task", "classes", "prediction_type"),
    [
        ("binary", [0, 1], "INT64"),
        ("binary", ["stays", "churns"], "BYTES"),
        ("multiclass", [3, 1, 2], "INT64"),
        ("multiclass", ["a", "b", "c"], "BYTES"),
        ("regression", [], "FP64"),
    ],
)
def test_the_answers_outputs_follow_the_predict_contract_of_every_task(
    task: str, classes: list[Any], prediction_type: str
) -> None:
    rng = np.random.default_rng(3)
    raw = rng.dirichlet(np.ones(len(classes)), size=6) if classes else rng.normal(50, 20, size=6)
    outputs = TaskOutputs(task, classes)

    columns = outputs.column_values(raw)
    prediction = outputs.tensors["prediction"]
    values = outputs.tensor_values(raw)["prediction"]

    contract = output_frame(task, classes, raw)  # what the model package and batch scoring give
    assert list(columns) == list(contract.columns)
    assert columns["prediction"].tolist() == contract["prediction"].tolist() == values.tolist()
    for name in contract.columns.drop("prediction"):
        np.testing.assert_allclose(columns[name], contract[name])
    assert prediction.datatype == prediction_type
    if prediction_type == "BYTES":
        encoded = [str(label).encode() for label in values]
        assert prediction.as_bytes(values) == b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    else:
        layout = {"INT64": "<i8", "FP64": "<f8"}[prediction_type]
        assert np.frombuffer(prediction.as_bytes(values), layout).tolist() == values.tolist()
