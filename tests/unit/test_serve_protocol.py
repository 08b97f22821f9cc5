"""Request parsing of the model server: both formats give the same typed columns; bad requests name the problem."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mlsteps.serve.protocol import RequestError, RequestSchema, parse_mlflow, parse_v2

SCHEMA = RequestSchema([("age", "double"), ("devices", "long"), ("plan", "string")])
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
        (b"{not json", "not valid JSON"),
        (b'{"inputs": [{"name": "age", "datatype": "FP64", "shape": [1], "data": [NaN]}]}', "NaN is not a JSON number"),
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
        (_v2(_tensor("age", [1.0, 2.0], shape=[1, 2]), *GOOD_TENSORS[1:]), r"input 'age' has shape \[1, 2\]"),
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
            {"dataframe_records": [{"age": 1.0, "devices": 2, "plan": "a", "zip": "x"}]},
            r"unknown column\(s\) \['zip'\]",
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
