"""The serving layouts benchmark: its one-process router sends each model's paths to that model's own app, and its
smoke mode runs every part for both layouts (about 40 s on 2 cores: two tiny models trained, two start-ups each)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import load_benchmark, run_benchmark
from starlette.testclient import TestClient

from mlsteps.serve.app import create_app
from mlsteps.serve.model import ModelHandle, load_model
from mlsteps.serving_bundle import read_bundle

SMOKE_TIMEOUT_SECONDS = 300


bench = load_benchmark("serving_layouts")


def _served(bundle_dir: Path, name: str) -> tuple[Any, bytes]:
    """The server's app for a bundle under another model name (the test bundles share one name), and a v2 request
    of its first smoke row."""
    bundle = replace(read_bundle(bundle_dir), model_name=name)
    columns = [{"name": column.name, "type": column.type} for column in bundle.columns]
    row = [bundle.smoke_inputs[0][column["name"]] for column in columns]
    return create_app(ModelHandle(load_model(bundle))), bench.v2_body(columns, [row])


def test_router_sends_each_models_paths_to_its_own_app(serving_bundle_dir: Path, task_bundle_dirs: dict) -> None:
    (churn, churn_body), (tiers, tiers_body) = (
        _served(serving_bundle_dir, "churn"),
        _served(task_bundle_dirs["multiclass"], "tiers"),
    )

    with TestClient(bench.ModelRouter({"churn": churn, "tiers": tiers})) as client:
        assert client.get("/v2/models/churn/ready").json() == {"name": "churn", "ready": True}
        assert client.get("/v2/models/tiers").json()["name"] == "tiers"
        for name, body, shape in (("churn", churn_body, [1]), ("tiers", tiers_body, [1, 3])):
            answer = client.post(f"/v2/models/{name}/infer", content=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_name"] == name and bench.v2_answer_rows(answer.content) == 1
            assert answer.json()["outputs"][0]["shape"] == shape, "binary: P(positive); multiclass: every class"
        reload = client.post("/v2/repository/models/tiers/load", json={"parameters": {"version": "2"}})
        assert reload.status_code == 403, "reaches the tiers app, whose reloads are off"
        unknown = client.post("/v2/models/spend/infer", content=churn_body)
        assert unknown.status_code == 404 and "['churn', 'tiers']" in unknown.json()["error"]
        assert client.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v2/models/b/infer", "b"),
        ("/v2/models/b/versions/2/infer", "b"),
        ("/v2/repository/models/b/load", "b"),
        ("/v2/models/c/ready", None),
        ("/v2/health/ready", "a"),
        ("/metrics", "a"),
    ],
)
def test_router_picks_the_app_by_the_model_name_in_the_path(path: str, model: str | None) -> None:
    router = bench.ModelRouter({"a": "app a", "b": "app b"})
    assert router.app_of(path) == (None if model is None else f"app {model}")


def test_smoke_run_measures_both_layouts(tmp_path: Path) -> None:
    report, output = run_benchmark("serving_layouts", ["--smoke"], tmp_path, SMOKE_TIMEOUT_SECONDS)

    assert report["config"]["smoke"] is True and report["config"]["model_counts"] == [2]
    assert [(m["name"], m["family"]) for m in report["config"]["models"]] == [
        ("churn-classifier", "mlp"),
        ("tier-classifier", "gbdt"),
    ]
    per, one = report["layouts"]
    assert [(f["layout"], f["processes"], f["ports"]) for f in (per, one)] == [
        ("per_model", 2, 2),
        ("one_process", 1, 1),
    ]
    for figures in (per, one):
        assert figures["seconds_to_all_ready"] > 0 and figures["memory_after_start"]["pss_mb"] > 0
        assert figures["memory_after_load"]["rss_mb"] > 0 and figures["rss_after_rounds_mb"] > 0
        steady, reload = figures["steady"], figures["reload"]
        (round_,) = steady["rounds"]
        assert steady["errors"] == {} and min(round_["by_model"].values()) > 0, "every model answered, correctly"
        assert steady["server_cpu_ms_per_request"] > 0
        assert reload["errors"] == {} and reload["reloads"] == 1 and reload["reload_failures"] == []
        assert reload["reloaded_model"] == "churn-classifier"
    # A kill of the first model's process leaves the other model answering only where it has its own process.
    assert (per["crash"]["others_answering"], one["crash"]["others_answering"]) == (1, 0)
    assert [row["figure"] for row in report["tables"]["2"]] == [label for label, _, _ in bench.ROWS]
    assert "one/per" in output and "isolation" in output
