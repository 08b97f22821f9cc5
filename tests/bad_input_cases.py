"""The bad-input matrix: every bad input the loop must refuse (or knowingly accept), as data.

Each case names its category, what is wrong, the entry point that must answer it, the outcome it gives there and a
fragment its message must contain, and holds a function that produces the input and calls the entry point in-process
against a shared ``World`` (earlier runs' artifacts, a registry with a champion, a serving bundle and its server
record). ``tests/unit/test_bad_input_matrix.py`` runs every case and checks that the world is unchanged after it;
``docs/bad-input-matrix.md`` is this list rendered, and a test keeps the two equal. Regenerate the page with:

    .venv/bin/python tests/bad_input_cases.py --write docs/bad-input-matrix.md
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REGENERATE = ".venv/bin/python tests/bad_input_cases.py --write docs/bad-input-matrix.md"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "bad-input-matrix.md"
USUAL_ROWS = 2_000  # rows of the world's earlier run; the "10 times the usual rows" case sends ten times as many


@dataclass(frozen=True)
class World:
    """What earlier runs left behind; every case only reads it (its run root and a new snapshot are its own)."""

    root: Path
    artifact_root: Path  # runs/<run>/... of earlier runs, and snapshots/
    serving_dir: Path  # the served bundle (v1/) and the local runtime's server record (server.json)
    mlflow_uri: str
    model_name: str
    champion_version: int
    registry_state: dict[str, Any]  # aliases, versions and tags as the cases found them
    settings: Any  # orchestration.settings.Settings of the churn model, for the models page's prechecks

    @property
    def snapshot_store(self) -> str:
        return str(self.artifact_root / "snapshots")

    def run_root(self, scratch: Path) -> str:
        """The run root of a case: a new run of the world, named after the case's scratch folder."""
        return str(self.artifact_root / "runs" / scratch.name)

    @property
    def bundle_dir(self) -> Path:
        return self.serving_dir / "v1"


@dataclass(frozen=True)
class Observed:
    """What an entry point did with a bad input: its outcome (an error type, exit code, HTTP status or a verdict)
    and its message, as one line."""

    outcome: str
    message: str


Produce = Callable[[World, Path], Observed]


@dataclass(frozen=True)
class Case:
    """One bad input and how the loop must answer it."""

    category: str
    name: str
    wrong: str  # what is wrong with the input, as the page shows it
    refused_by: str  # the entry point that answers it first
    outcome: str  # Observed.outcome expected
    fragment: str  # the message must contain this
    produce: Produce = field(repr=False)
    writes: bool = False  # whether the case may add files to the world (its own run root, a new snapshot)
    xfail: str | None = None  # why the product does not answer it as it should yet (strict)

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}".replace(" ", "-").replace("/", "-")


def _one_line(text: str) -> str:
    """typer draws its errors in a box wrapped at the terminal width; the borders and line breaks are dropped."""
    return " ".join(text.replace("│", " ").split())


def _raised(call: Callable[[], Any]) -> Observed:
    """Call an entry point; the exception it raises (or ``returned`` when it does not) and its message."""
    try:
        returned = call()
    except Exception as exc:
        return Observed(type(exc).__name__, _one_line(str(exc)))
    return Observed("returned", _one_line(str(returned)))


# --- step CLIs (in-process through typer, as ``python -m mlsteps``) ---


def _cli(*args: str) -> Observed:
    from typer.testing import CliRunner

    from mlsteps.cli import app

    outcome = CliRunner().invoke(app, list(args))
    return Observed(f"exit {outcome.exit_code}", _one_line(outcome.stderr or outcome.output))


def _step_option(step: str, *args: str) -> Produce:
    return lambda world, scratch: _cli(step, "--run-root", world.run_root(scratch), *args)


def _make_dataset_option(*args: str) -> Produce:
    return lambda world, scratch: _cli("make-dataset", "--output-uri", f"{world.run_root(scratch)}/churn.csv", *args)


# --- dataset files: through the snapshot and validate steps of a new run ---


def _churn(rows: int = 600, seed: int = 21) -> pd.DataFrame:
    from mlsteps.data.datasets import generate_churn

    return generate_churn(rows, seed=seed)


def _steps(world: World, uri: str, config: Any = None) -> Observed:
    """Snapshot then validate ``uri`` as a new run of the world; the first step that refuses it answers."""
    from mlsteps.config import load_pipeline_config
    from mlsteps.errors import StepError
    from mlsteps.steps import snapshot, validate

    config = config or load_pipeline_config()
    run_root = world.run_root(Path(uri).parent)
    try:
        rows = snapshot.run(run_root, config, uri, world.snapshot_store)["rows"]
    except StepError as exc:
        return Observed(f"snapshot: {type(exc).__name__}", _one_line(str(exc)))
    try:
        validate.run(run_root, config)
    except StepError as exc:
        return Observed(f"validate: {type(exc).__name__}", _one_line(str(exc)))
    return Observed("accepted", f"validated {rows} rows")


def _file(name: str, write: Callable[[Path], None], config: Callable[[], Any] | None = None) -> Produce:
    """A case that writes a dataset file ``name`` and runs it through the steps."""

    def produce(world: World, scratch: Path) -> Observed:
        path = scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return _steps(world, str(path), config() if config else None)

    return produce


def _csv(frame: pd.DataFrame) -> Callable[[Path], None]:
    return lambda path: path.write_text(frame.to_csv(index=False))


def _cut_csv(path: Path) -> None:
    text = _churn(20).to_csv(index=False).rstrip("\n")
    last_line = text.rsplit("\n", 1)[1]
    path.write_text(text[: -len(last_line) // 2])


def _encoded(encoding: str) -> Callable[[Path], None]:
    frame = _churn().assign(region=lambda f: f["region"].where(f.index % 3 > 0, "Zürich-Süd"))
    return lambda path: path.write_bytes(frame.to_csv(index=False).encode(encoding))


def _duplicated_columns(path: Path) -> None:
    frame = _churn()
    frame.insert(3, "age_again", frame["age"] + 1)
    path.write_text(frame.to_csv(index=False).replace("age_again", "age", 1))


def _with_column(column: str, values: Callable[[pd.DataFrame], Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        frame = _churn()
        path.write_text(frame.assign(**{column: values(frame)}).to_csv(index=False))

    return write


def _replace_some(column: str, value: Any, rows: int = 5) -> Callable[[pd.DataFrame], Any]:
    def values(frame: pd.DataFrame) -> Any:
        changed = frame[column].astype(object).copy()
        changed.iloc[:rows] = value
        return changed

    return values


def _future_times(frame: pd.DataFrame) -> Any:
    times = frame["event_time"].copy()
    times.iloc[-3:] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)
    return times


def _with_max_rows() -> Any:
    from mlsteps.config import load_pipeline_config

    config = load_pipeline_config()
    return config.model_copy(update={"dataset": config.dataset.model_copy(update={"max_rows": 5 * USUAL_ROWS})})


def _folder(with_a_table: bool) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        folder = scratch / "data.csv"
        folder.mkdir(parents=True)
        if with_a_table:
            (folder / "part-0.csv").write_text(_churn(50).to_csv(index=False))
        return _steps(world, str(folder))

    return produce


# --- configs ---


def _pipeline_overrides(overrides: dict[str, Any]) -> Produce:
    from mlsteps.config import load_pipeline_config

    return lambda world, scratch: _raised(lambda: load_pipeline_config(overrides=overrides))


def _dataset_config(changes: dict[str, Any]) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        from mlsteps.config import DEFAULT_CONFIG_PATH, load_dataset_config
        from mlsteps.data import storage

        raw = load_dataset_config(str(DEFAULT_CONFIG_PATH.parent / "datasets" / "churn.yaml")).model_dump()
        path = scratch / "churn.yaml"
        storage.write_json(str(path), {**raw, **changes})
        return _raised(lambda: load_dataset_config(str(path)))

    return produce


def _registry_config_file(registry: dict[str, str]) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        import yaml

        from mlsteps.config import DEFAULT_CONFIG_PATH

        raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
        raw["dataset"] = str(DEFAULT_CONFIG_PATH.parent / raw["dataset"])
        raw["registry"] |= registry
        path = scratch / "pipeline.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw))
        return _cli("register", "--run-root", world.run_root(scratch), "--config", str(path))

    return produce


def _two_models(second: dict[str, Any], without: str | None = None) -> Produce:
    """A models folder holding churn.yaml and a second model file; what ``load_models`` says of the second."""

    def produce(world: World, scratch: Path) -> Observed:
        import yaml

        from orchestration.models import DEFAULT_MODELS_DIR, load_models

        scratch.mkdir(parents=True, exist_ok=True)
        churn = yaml.safe_load((DEFAULT_MODELS_DIR / "churn.yaml").read_text())
        for name in ("extends", "dataset"):
            churn[name] = str((DEFAULT_MODELS_DIR / churn[name]).resolve())
        (scratch / "churn.yaml").write_text(yaml.safe_dump(churn))
        copy = {key: value for key, value in {**churn, **second}.items() if key != without}
        (scratch / "copy.yaml").write_text(yaml.safe_dump(copy))
        entry = next(entry for entry in load_models(scratch) if entry.config_path.name == "copy.yaml")
        return Observed("refused" if entry.error else "loaded", entry.error or "")

    return produce


# --- DAG params: Airflow's own check of the trigger form, then the models page's prechecks ---


@functools.cache
def _dag_params(dag_file: str) -> Any:
    import importlib.util

    from orchestration.models import DEFAULT_MODELS_DIR
    from orchestration.settings import load_settings

    path = Path(__file__).resolve().parents[1] / "dags" / f"{dag_file}.py"
    spec = importlib.util.spec_from_file_location(f"bad_input_{dag_file}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_params(load_settings(str(DEFAULT_MODELS_DIR / "churn.yaml")))


def _param(dag_file: str, name: str, value: Any) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        from airflow.sdk import ParamsDict

        def trigger() -> Any:
            params = ParamsDict(_dag_params(dag_file))
            params[name] = value
            return params.validate()

        return _raised(trigger)

    return produce


def _precheck(purpose: str, conf: dict[str, Any] | Callable[[Path], dict[str, Any]], dag_file: str) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        from mlflow import MlflowClient

        from orchestration.models_page import prechecks

        client = MlflowClient(tracking_uri=world.mlflow_uri)
        run_conf = conf(scratch) if callable(conf) else conf
        problems = prechecks.run_problems(world.settings, client, purpose, run_conf, list(_dag_params(dag_file)))
        return Observed("refused" if problems else "accepted", "; ".join(problems))

    return produce


def _lacking_columns(scratch: Path) -> dict[str, Any]:
    from mlsteps.data.snapshots import write_table

    uri = str(scratch / "lacking.csv")
    write_table(_churn(50).drop(columns=["tenure_months", "churned"]), uri)
    return {"dataset_uri": uri}


# --- labels files ---

LABEL_IDS = [f"C-{i}" for i in range(6)]


def _labels(frame: pd.DataFrame, logged: list[str] | None = None) -> Produce:
    """Labels as the performance step reads them; the problems it reports, or the ids no prediction has."""

    def produce(world: World, scratch: Path) -> Observed:
        from mlsteps.errors import DataError
        from mlsteps.monitoring.performance.labels import read_labels, unknown_label_ids

        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / "labels.csv"
        path.write_text(frame.to_csv(index=False))
        try:
            labels = read_labels(
                str(path),
                id_column="customer_id",
                label_column="churned",
                labelled_at_column=None,
                task="binary",
                classes=[0, 1],
            )
        except DataError as exc:
            return Observed(type(exc).__name__, _one_line(str(exc)))
        if logged is not None:
            unknown = unknown_label_ids(labels, logged)
            return Observed("not used", f"{unknown} label(s) match no logged prediction")
        return Observed("dropped or counted once", "; ".join(labels.problems))

    return produce


# --- queue messages ---

DATASET_URI = "s3://ml-data/churn/churn.parquet"


def _s3_event(bucket: str = "ml-data", key: str = "churn/churn.parquet", event: str = "ObjectCreated:Put") -> str:
    record = {
        "eventSource": "aws:s3",
        "eventName": event,
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10}},
    }
    return json.dumps({"Records": [record]})


def _message(body: str) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        from orchestration.new_data import classify_message

        event, reason = classify_message(body, DATASET_URI)
        return Observed("ignored" if event is None else "new data", reason)

    return produce


def _asset_event(extra: dict[str, Any]) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        from orchestration.new_data import new_data_event

        event, reason = new_data_event(extra, DATASET_URI)
        return Observed("ignored" if event is None else "new data", reason)

    return produce


# --- serving requests: the model server's ASGI app on the world's bundle ---


@dataclass
class _Server:
    """The app on the world's bundle, made once per world (loading the ONNX model is the costly part)."""

    apps: dict[tuple[Path, bool], Any] = field(default_factory=dict)

    def client(self, world: World, strict: bool) -> Any:
        from starlette.testclient import TestClient

        from mlsteps.serve.app import create_app
        from mlsteps.serve.cli import policy_from_config
        from mlsteps.serve.model import ModelHandle, load_model
        from mlsteps.serving_bundle import read_bundle

        key = (world.bundle_dir, strict)
        if key not in self.apps:
            model = load_model(read_bundle(world.bundle_dir), policy=policy_from_config(None, strict or None))
            self.apps[key] = TestClient(create_app(ModelHandle(model)))
        return self.apps[key]


_SERVER = _Server()


def _smoke_row(world: World) -> dict[str, Any]:
    from mlsteps.serving_bundle import read_bundle

    return dict(read_bundle(world.bundle_dir).smoke_inputs[0])


def _request(
    body: Callable[[World], bytes | Iterator[bytes]],
    path: str = "/invocations",
    content_type: str = "application/json",
    strict: bool = False,
) -> Produce:
    def produce(world: World, scratch: Path) -> Observed:
        answer = _SERVER.client(world, strict).post(path, content=body(world), headers={"Content-Type": content_type})
        try:
            message = answer.json().get("error", "") if answer.status_code != 200 else "scored"
        except ValueError:
            message = answer.text
        return Observed(f"HTTP {answer.status_code}", _one_line(message))

    return produce


def _records(rows: Callable[[World], list[dict[str, Any]]]) -> Callable[[World], bytes]:
    return lambda world: json.dumps({"dataframe_records": rows(world)}).encode()


def _v2_age_shape(world: World) -> bytes:
    row = _smoke_row(world)
    inputs = [
        {"name": name, "datatype": "BYTES" if isinstance(value, str) else "FP64", "shape": [1], "data": [value]}
        for name, value in row.items()
    ]
    inputs[0] = dict(inputs[0], shape=[1, 2], data=[inputs[0]["data"][0]] * 2)
    return json.dumps({"inputs": inputs}).encode()


def _nan_body(world: World) -> bytes:
    row = _smoke_row(world)
    return json.dumps({"dataframe_records": [row]}).replace('"age": ', '"age": NaN, "x": ').encode()


def _infinity_body(world: World) -> bytes:
    return _nan_body(world).replace(b"NaN", b"-Infinity")


def _huge_body(world: World) -> bytes:
    return json.dumps({"dataframe_records": [_smoke_row(world)] * 20_000}).encode()


def _trickled_body(world: World) -> Iterator[bytes]:
    """A client that sends a body over the limit in small chunks, without Content-Length."""
    body = _huge_body(world)
    for start in range(0, len(body), 16_384):
        yield body[start : start + 16_384]


def _without(column: str) -> Callable[[World], list[dict[str, Any]]]:
    return lambda world: [{k: v for k, v in _smoke_row(world).items() if k != column}]


def _extra(world: World) -> list[dict[str, Any]]:
    return [dict(_smoke_row(world), coupon_code="SPRING")]


# --- the cases ---

_OPTIONS = "step options"
_CONFIGS = "configs"
_DATA = "dataset files"
_PARAMS = "DAG params"
_LABELS = "labels files"
_QUEUE = "queue messages"
_SERVING = "serving requests"

CASES: list[Case] = [
    # dataset files
    Case(
        _DATA,
        "corrupt parquet",
        "bytes that are not Parquet in a .parquet file",
        "snapshot",
        "snapshot: DataError",
        "check that it is a complete Parquet file",
        _file("churn.parquet", lambda p: p.write_bytes(b"PAR1 not parquet")),
        writes=True,
    ),
    Case(
        _DATA,
        "truncated csv",
        "the last record cut in half",
        "snapshot",
        "snapshot: DataError",
        "the last record, has",
        _file("churn.csv", _cut_csv),
        writes=True,
    ),
    Case(
        _DATA,
        "latin-1 csv",
        "a CSV written in latin-1, not UTF-8",
        "snapshot",
        "snapshot: DataError",
        "UTF-8",
        _file("churn.csv", _encoded("latin-1")),
        writes=True,
    ),
    Case(
        _DATA,
        "utf-16 csv",
        "a CSV written in UTF-16",
        "snapshot",
        "snapshot: DataError",
        "'utf-8' codec can't decode byte 0xff in position 0",
        _file("churn.csv", _encoded("utf-16")),
        writes=True,
    ),
    Case(
        _DATA,
        "duplicated columns",
        "the header names `age` twice",
        "snapshot",
        "snapshot: DataError",
        "duplicate column names in the header: 'age' 2 times",
        _file("churn.csv", _duplicated_columns),
        writes=True,
    ),
    Case(
        _DATA,
        "inf values",
        "`monthly_charges` holds inf",
        "validate",
        "validate: ValidationFailed",
        "monthly_charges: expect_column_values_to_be_between: 5 of 600 values (0.8%) outside [0, 1000], e.g. inf",
        _file("churn.csv", _with_column("monthly_charges", _replace_some("monthly_charges", np.inf))),
        writes=True,
    ),
    Case(
        _DATA,
        "future timestamps",
        "3 event times 30 days ahead",
        "validate",
        "validate: ValidationFailed",
        "event_time: expect_column_values_to_not_be_in_the_future: 3 of 600 values",
        _file("churn.csv", _with_column("event_time", _future_times)),
        writes=True,
    ),
    Case(
        _DATA,
        "target leakage",
        "`late_payments_12m` is a copy of the target",
        "validate",
        "validate: ValidationFailed",
        "late_payments_12m: expect_column_to_not_predict_the_target_alone: alone scores 1.0000",
        _file("churn.csv", _with_column("late_payments_12m", lambda f: f["churned"])),
        writes=True,
    ),
    Case(
        _DATA,
        "header only",
        "a CSV with its header and 0 rows",
        "snapshot",
        "snapshot: DataError",
        "has no rows (columns: ['customer_id',",
        _file("churn.csv", _csv(_churn().head(0))),
        writes=True,
    ),
    Case(
        _DATA,
        "ten times the rows",
        f"{10 * USUAL_ROWS} rows, 10 times the earlier run's; no row limit set",
        "validate",
        "accepted",
        f"validated {10 * USUAL_ROWS} rows",
        _file("churn.csv", _csv(_churn(10 * USUAL_ROWS))),
        writes=True,
    ),
    Case(
        _DATA,
        "ten times the rows over max_rows",
        f"{10 * USUAL_ROWS} rows with dataset.max_rows {5 * USUAL_ROWS}",
        "validate",
        "validate: ValidationFailed",
        "expect_table_row_count_to_be_between: 20000 rows; expected between 500 and 10000",
        _file("churn.csv", _csv(_churn(10 * USUAL_ROWS)), _with_max_rows),
        writes=True,
    ),
    Case(
        _DATA,
        "empty file",
        "a .csv file of 0 bytes",
        "snapshot",
        "snapshot: DataError",
        "is empty (0 bytes); export the data again",
        _file("churn.csv", lambda p: p.write_bytes(b"")),
        writes=True,
    ),
    Case(
        _DATA,
        "folder with tables",
        "a folder (holding a CSV) given as the input file",
        "snapshot",
        "snapshot: DataError",
        "is a folder, not a file: give the path of one CSV or Parquet file in it, e.g.",
        _folder(True),
    ),
    Case(
        _DATA,
        "empty folder",
        "an empty folder named data.csv given as the input file",
        "snapshot",
        "snapshot: DataError",
        "(this folder holds none)",
        _folder(False),
    ),
    Case(
        _DATA,
        "unknown extension",
        "a .xlsx file",
        "snapshot",
        "snapshot: DataError",
        "unknown file extension '.xlsx'; name a CSV or Parquet file",
        _file("churn.xlsx", _csv(_churn(10))),
    ),
    Case(
        _DATA,
        "missing required column",
        "no `tenure_months` column",
        "validate",
        "validate: ValidationFailed",
        "tenure_months: expect_column_to_exist: column is missing",
        _file("churn.csv", lambda p: p.write_text(_churn().drop(columns="tenure_months").to_csv(index=False))),
        writes=True,
    ),
    Case(
        _DATA,
        "text in a numeric column",
        "`age` holds 'forty' in 5 rows",
        "validate",
        "validate: ValidationFailed",
        "age: expect_column_values_to_be_in_type_list",
        _file("churn.csv", _with_column("age", _replace_some("age", "forty"))),
        writes=True,
    ),
    Case(
        _DATA,
        "n/a in a numeric column",
        "`age` holds 'n/a' in 5 rows (a missing value to pandas)",
        "validate",
        "validate: ValidationFailed",
        "age: expect_column_values_to_not_be_null: 5 of 600 values (0.8%) are null",
        _file("churn.csv", _with_column("age", _replace_some("age", "n/a"))),
        writes=True,
    ),
    Case(
        _DATA,
        "unknown category",
        "`plan` holds 'platinum', not a known plan, in 200 of 600 rows",
        "validate",
        "validate: ValidationFailed",
        "plan: expect_column_values_to_be_in_set: 200 of 600 values (33.3%) not in",
        _file("churn.csv", _with_column("plan", _replace_some("plan", "platinum", rows=200))),
        writes=True,
    ),
    Case(
        _DATA,
        "a few unknown categories",
        "`plan` holds 'platinum' in 5 of 600 rows, within max_unknown_fraction",
        "validate",
        "accepted",
        "validated 600 rows",
        _file("churn.csv", _with_column("plan", _replace_some("plan", "platinum"))),
        writes=True,
    ),
    Case(
        _DATA,
        "nulls in the target",
        "`churned` is empty in 5 rows",
        "validate",
        "validate: ValidationFailed",
        "churned: expect_column_values_to_not_be_null: 5 of 600 values (0.8%) are null",
        _file("churn.csv", _with_column("churned", _replace_some("churned", None))),
        writes=True,
    ),
    # configs
    Case(
        _CONFIGS,
        "unknown key",
        "training.epoch (for epochs)",
        "load_pipeline_config",
        "ConfigError",
        "training.epoch: Extra inputs are not permitted",
        _pipeline_overrides({"training": {"epoch": 5}}),
    ),
    Case(
        _CONFIGS,
        "wrong type",
        "training.epochs: 'many'",
        "load_pipeline_config",
        "ConfigError",
        "training.epochs: Input should be a valid integer",
        _pipeline_overrides({"training": {"epochs": "many"}}),
    ),
    Case(
        _CONFIGS,
        "out of range",
        "evaluation.threshold: 1.5",
        "load_pipeline_config",
        "ConfigError",
        "evaluation.threshold 1.5 is outside the range of roc_auc",
        _pipeline_overrides({"evaluation": {"threshold": 1.5}}),
    ),
    Case(
        _CONFIGS,
        "empty model name",
        "registry.model_name: '' in the --config file",
        "register (CLI)",
        "exit 2",
        "registry.model_name: Value error, '' is not a name MLflow accepts",
        _registry_config_file({"model_name": ""}),
    ),
    Case(
        _CONFIGS,
        "empty experiment name",
        "registry.experiment_name: ''",
        "load_pipeline_config",
        "ConfigError",
        "registry.experiment_name: String should have at least 1 character",
        _pipeline_overrides({"registry": {"experiment_name": ""}}),
    ),
    Case(
        _CONFIGS,
        "max_rows below min_rows",
        "dataset max_rows 400 with min_rows 500",
        "load_dataset_config",
        "ConfigError",
        "max_rows 400 is below min_rows 500",
        _dataset_config({"max_rows": 400}),
    ),
    Case(
        _CONFIGS,
        "leakage limit out of range",
        "leakage.max_single_feature_score: 1.5",
        "load_dataset_config",
        "ConfigError",
        "leakage.max_single_feature_score",
        _dataset_config({"leakage": {"max_single_feature_score": 1.5}}),
    ),
    Case(
        _CONFIGS,
        "two models, one name",
        "a second model file with registry.model_name churn-classifier",
        "load_models",
        "refused",
        "registry.model_name 'churn-classifier' is also claimed by",
        _two_models({"serving": {"local": {"port": 8099}}}),
    ),
    Case(
        _CONFIGS,
        "two models, one port",
        "a second model with its own name on churn's local serving port",
        "load_models",
        "refused",
        "serving.local.port 8081 is also claimed by",
        _two_models({"registry": {"model_name": "churn-copy", "experiment_name": "churn-copy"}}),
    ),
    Case(
        _CONFIGS,
        "model without a dataset",
        "a model file that sets no dataset",
        "load_models",
        "refused",
        "dataset: missing; every model names its own dataset config",
        _two_models({"registry": {"model_name": "churn-copy"}}, without="dataset"),
    ),
    # DAG params
    Case(
        _PARAMS,
        "wrong type",
        "retrain epochs: 'ten'",
        "Airflow params (trigger form)",
        "ParamValidationError",
        "Invalid input for param epochs: 'ten' is not of type 'integer'",
        _param("ml_retrain", "epochs", "ten"),
    ),
    Case(
        _PARAMS,
        "out of range",
        "retrain learning_rate: 0",
        "Airflow params (trigger form)",
        "ParamValidationError",
        "Invalid input for param learning_rate: 0 is less than or equal to the minimum of 0",
        _param("ml_retrain", "learning_rate", 0),
    ),
    Case(
        _PARAMS,
        "canary share out of range",
        "deploy canary_share: 1.5",
        "Airflow params (trigger form)",
        "ParamValidationError",
        "Invalid input for param canary_share: 1.5 is greater than the maximum of 1",
        _param("ml_deploy", "canary_share", 1.5),
    ),
    Case(
        _PARAMS,
        "dataset not a table",
        "retrain dataset_uri: /data/churn.xlsx",
        "Airflow params (trigger form)",
        "ParamValidationError",
        "Invalid input for param dataset_uri: '/data/churn.xlsx' does not match",
        _param("ml_retrain", "dataset_uri", "/data/churn.xlsx"),
    ),
    Case(
        _PARAMS,
        "model not a version",
        "deploy model: 'latest'",
        "Airflow params (trigger form)",
        "ParamValidationError",
        "Invalid input for param model: 'latest' does not match '^(champion|[1-9][0-9]*)$'",
        _param("ml_deploy", "model", "latest"),
    ),
    Case(
        _PARAMS,
        "unknown param",
        "retrain epoch: 5 (for epochs)",
        "models page prechecks",
        "refused",
        "unknown params ['epoch']: churn-classifier.retrain has ['candidates', 'dataset_uri',",
        _precheck("retrain", {"epoch": 5}, "ml_retrain"),
    ),
    Case(
        _PARAMS,
        "missing dataset",
        "retrain dataset_uri: a file that does not exist",
        "models page prechecks",
        "refused",
        "dataset_uri: input file not found: no such file: /no/such/churn.csv; check the input URI",
        _precheck("retrain", {"dataset_uri": "/no/such/churn.csv"}, "ml_retrain"),
    ),
    Case(
        _PARAMS,
        "dataset lacking columns",
        "retrain dataset_uri: a CSV without tenure_months and churned",
        "models page prechecks",
        "refused",
        "lacks the columns ['tenure_months', 'churned']",
        _precheck("retrain", _lacking_columns, "ml_retrain"),
    ),
    Case(
        _PARAMS,
        "missing version",
        "deploy model: '9', a version the registry lacks",
        "models page prechecks",
        "refused",
        "model: churn-classifier has no version 9; its newest versions are 2, 1",
        _precheck("deploy", {"model": "9"}, "ml_deploy"),
    ),
    # labels files
    Case(
        _LABELS,
        "missing id column",
        "no customer_id column",
        "read_labels",
        "DataError",
        "lacks the column(s) ['customer_id']",
        _labels(pd.DataFrame({"id": LABEL_IDS, "churned": 1})),
    ),
    Case(
        _LABELS,
        "duplicate ids",
        "C-0 labelled twice alike, C-1 twice differently",
        "read_labels",
        "dropped or counted once",
        "repeat the label of an id already labelled, e.g. ids ['C-0']: counted once; 2 label row(s) of 1 id(s)",
        _labels(pd.DataFrame({"customer_id": ["C-0", "C-0", "C-1", "C-1"], "churned": [1, 1, 0, 1]})),
    ),
    Case(
        _LABELS,
        "unknown ids",
        "labels of ids no logged prediction has",
        "unknown_label_ids (performance step)",
        "not used",
        "4 label(s) match no logged prediction",
        _labels(pd.DataFrame({"customer_id": LABEL_IDS, "churned": 1}), logged=LABEL_IDS[:2]),
    ),
    Case(
        _LABELS,
        "bad label values",
        "churned: 'yes' and 7, not a class",
        "read_labels",
        "dropped or counted once",
        "2 label(s) in column 'churned' are not one of the classes [0, 1], e.g. ['yes', '7']: dropped",
        _labels(pd.DataFrame({"customer_id": LABEL_IDS[:3], "churned": ["yes", "7", "1"]})),
    ),
    Case(
        _LABELS,
        "missing ids",
        "customer_id empty in 2 rows",
        "read_labels",
        "dropped or counted once",
        "2 label row(s) have no id in column 'customer_id'",
        _labels(pd.DataFrame({"customer_id": ["C-0", None, " "], "churned": [1, 0, 1]})),
    ),
    # queue messages
    Case(
        _QUEUE,
        "malformed json",
        "a message body that is not JSON",
        "classify_message",
        "ignored",
        "queue message is not an S3 event notification",
        _message('{"Records": ['),
    ),
    Case(
        _QUEUE,
        "wrong event type",
        "ObjectRemoved:Delete of the dataset",
        "classify_message",
        "ignored",
        "is not a new version (only ObjectCreated:* events are)",
        _message(_s3_event(event="ObjectRemoved:Delete")),
    ),
    Case(
        _QUEUE,
        "unknown bucket",
        "an object of another bucket",
        "classify_message",
        "ignored",
        "not the dataset s3://ml-data/churn/churn.parquet",
        _message(_s3_event(bucket="other-bucket")),
    ),
    Case(
        _QUEUE,
        "unknown key",
        "another object of the dataset's bucket",
        "classify_message",
        "ignored",
        "S3 event for s3://ml-data/churn/notes.txt, not the dataset",
        _message(_s3_event(key="churn/notes.txt")),
    ),
    Case(
        _QUEUE,
        "test event",
        "the s3:TestEvent S3 sends on setup",
        "classify_message",
        "ignored",
        "S3 test event of bucket ml-data",
        _message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "ml-data"})),
    ),
    Case(
        _QUEUE,
        "asset event without messages",
        "a training_data event from the REST API",
        "new_data_event",
        "ignored",
        "holds no SQS messages",
        _asset_event({"note": "manual"}),
    ),
    # serving requests
    Case(
        _SERVING,
        "malformed json",
        "a body that is not JSON",
        "POST /invocations",
        "HTTP 400",
        "not valid JSON",
        _request(lambda world: b'{"dataframe_records": ['),
    ),
    Case(
        _SERVING,
        "text body",
        "Content-Type text/plain",
        "POST /invocations",
        "HTTP 415",
        "content type 'text/plain' is not supported: send JSON",
        _request(_records(lambda w: [_smoke_row(w)]), content_type="text/plain"),
    ),
    Case(
        _SERVING,
        "wrong shape",
        "a v2 tensor of shape [1, 2] among [1]",
        "POST /v2/models/{name}/infer",
        "HTTP 400",
        "has shape [1, 2]: send shape [rows] or [rows, 1]",
        _request(_v2_age_shape, path="/v2/models/churn-classifier/infer"),
    ),
    Case(
        _SERVING,
        "nan",
        "age: NaN (MLflow's missing value)",
        "POST /invocations",
        "HTTP 200",
        "scored",
        _request(_nan_body),
    ),
    Case(
        _SERVING,
        "infinity",
        "age: -Infinity",
        "POST /invocations",
        "HTTP 400",
        "column 'age' row 0 is -inf: send a finite number, or null (NaN) for a missing value",
        _request(_infinity_body),
    ),
    Case(
        _SERVING,
        "missing column",
        "a row without tenure_months",
        "POST /invocations",
        "HTTP 400",
        "missing column(s) ['tenure_months']: send exactly the model's columns",
        _request(_records(_without("tenure_months"))),
    ),
    Case(
        _SERVING,
        "extra column",
        "a row with coupon_code, serving.strict_columns on",
        "POST /invocations",
        "HTTP 400",
        "unknown column(s) ['coupon_code']",
        _request(_records(_extra), strict=True),
    ),
    Case(
        _SERVING,
        "long string",
        "plan: a string of 3,000,000 characters",
        "POST /invocations",
        "HTTP 400",
        "column 'plan' row 0 holds a string of 3000000 characters",
        _request(_records(lambda w: [dict(_smoke_row(w), plan="x" * 3_000_000)])),
    ),
    Case(
        _SERVING,
        "huge payload",
        "20,000 rows, a body over the 4 MiB limit",
        "POST /invocations",
        "HTTP 413",
        "is over the limit of 4194304 bytes: send fewer rows per request",
        _request(_huge_body),
    ),
    Case(
        _SERVING,
        "slow client",
        "the same body trickled in 16 KiB chunks without Content-Length",
        "POST /invocations",
        "HTTP 413",
        "request body of more bytes is over the limit",
        _request(_trickled_body),
    ),
    # step options
    *(
        Case(
            _OPTIONS,
            f"{step} {option}={value}",
            f"{step} {option} {value}",
            f"{step} (CLI)",
            "exit 2",
            message,
            _step_option(step, *before, option, value),
        )
        for step, before, option, value, message in [
            ("train", (), "--epochs", "-1", "Invalid value for '--epochs': Input should be greater than or equal to 1"),
            (
                "train",
                (),
                "--epochs",
                "1001",
                "Invalid value for '--epochs': Input should be less than or equal to 1000",
            ),
            ("train", (), "--learning-rate", "0", "Invalid value for '--learning-rate': 0.0 is not above 0"),
            (
                "train",
                (),
                "--learning-rate",
                "2",
                "Invalid value for '--learning-rate': Input should be less than or equal to 1",
            ),
            (
                "train",
                (),
                "--batch-size",
                "0",
                "Invalid value for '--batch-size': Input should be greater than or equal to 1",
            ),
            (
                "train",
                (),
                "--model",
                "forest",
                "'forest' is not a model family: use one of ['mlp', 'gbdt'] or your own trainer as module:Class",
            ),
            (
                "train",
                (),
                "--model",
                "no_such_module:Trainer",
                "training.model 'no_such_module:Trainer': cannot import module 'no_such_module'",
            ),
            (
                "evaluate",
                (),
                "--max-degradation",
                "-0.01",
                "Invalid value for '--max-degradation': Input should be greater than or equal to 0",
            ),
            (
                "evaluate",
                (),
                "--threshold",
                "1.5",
                "evaluation.threshold 1.5 is outside the range of roc_auc [0.0, 1.0]",
            ),
            ("evaluate", (), "--primary-metric", "rmse", "evaluation.primary_metric: 'rmse' is not a binary metric"),
            (
                "drift",
                ("--prediction-store", "p"),
                "--window-hours",
                "0",
                "Invalid value for '--window-hours': Input should be greater than or equal to 1",
            ),
            (
                "drift",
                ("--prediction-store", "p"),
                "--window-hours",
                "745",
                "Invalid value for '--window-hours': Input should be less than or equal to 744",
            ),
            (
                "drift",
                ("--prediction-store", "p"),
                "--min-rows",
                "0",
                "Invalid value for '--min-rows': Input should be greater than or equal to 1",
            ),
            ("deploy", (), "--canary-share", "0", "Invalid value for '--canary-share': 0.0 is not above 0"),
            (
                "deploy",
                (),
                "--canary-share",
                "1.5",
                "Invalid value for '--canary-share': Input should be less than or equal to 1",
            ),
            (
                "score",
                ("--input-uri", "in.csv", "--prediction-store", "p"),
                "--batch-rows",
                "0",
                "Invalid value for '--batch-rows': Input should be greater than or equal to 1",
            ),
            (
                "score",
                ("--input-uri", "in.csv", "--prediction-store", "p"),
                "--model-version",
                "0",
                "Invalid value for '--model-version': Input should be greater than or equal to 1",
            ),
        ]
    ),
    *(
        Case(
            _OPTIONS,
            f"make-dataset {option}={value}",
            f"make-dataset {option} {value}",
            "make-dataset (CLI)",
            "exit 2",
            message,
            _make_dataset_option(option, value),
        )
        for option, value, message in [
            ("--seed", "-1", "Invalid value for '--seed': Input should be greater than or equal to 0"),
            ("--days", "0", "Invalid value for '--days': Input should be greater than or equal to 1"),
            (
                "--covariate-drift",
                "-0.5",
                "Invalid value for '--covariate-drift': Input should be greater than or equal to 0",
            ),
        ]
    ),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(cases: list[Case] = CASES) -> str:
    """The matrix as a Markdown page, one row per case in the order of ``CASES``."""
    lines = [
        "# Bad-input matrix",
        "",
        "Every bad input the loop is tested with: what is wrong, the entry point that answers it first, how it",
        "answers and an excerpt of its message. After each case the champion (registry alias `champion`), the",
        "version list, the served bundle and every earlier artifact are checked unchanged by sha256",
        "(`tests/unit/test_bad_input_matrix.py`). A case marked *expected to fail* names what the product lacks.",
        "",
        f"Generated from `tests/bad_input_cases.py`; do not edit by hand. Regenerate with `{REGENERATE}`.",
        "",
        "| category | input | refused by | outcome | message excerpt |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        outcome = f"{case.outcome} (expected to fail: {case.xfail})" if case.xfail else case.outcome
        excerpt = f"`{_cell(case.fragment)}`" if case.fragment else ""
        lines.append(
            f"| {case.category} | {_cell(case.wrong)} | {_cell(case.refused_by)} | {_cell(outcome)} | {excerpt} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Render the bad-input matrix as Markdown.")
    parser.add_argument("--write", type=Path, help="write the page here instead of printing it")
    args = parser.parse_args()
    if args.write:
        args.write.write_text(render())
    else:
        sys.stdout.write(render())


if __name__ == "__main__":
    main()
