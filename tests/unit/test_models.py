"""The models folder: each config loads on its own; clashes, bad names, missing own fields and deployment-wide fields
are refused with the file and the field named, and the other models are unaffected."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsteps.config import DEFAULT_CONFIG_PATH, MAX_MODEL_NAME_LENGTH
from mlsteps.errors import ConfigError
from orchestration.models import DEFAULT_MODELS_DIR, dag_id, load_models

CONFIG = DEFAULT_CONFIG_PATH.parent


def _models(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, body in files.items():
        (folder / f"{stem}.yaml").write_text(f"extends: {DEFAULT_CONFIG_PATH}\n{body}")
    return folder


def _model(name: str, port: int, dataset: str = "churn") -> str:
    dataset_path = CONFIG / "datasets" / f"{dataset}.yaml"
    return f"dataset: {dataset_path}\nregistry: {{model_name: {name}}}\nserving: {{local: {{port: {port}}}}}\n"


def _by_file(folder: Path) -> dict[str, tuple[str | None, str | None]]:
    return {entry.config_path.stem: (entry.name, entry.error) for entry in load_models(folder)}


def test_the_built_in_models_load_with_their_own_dataset_task_and_port() -> None:
    entries = {entry.name: entry.settings for entry in load_models(DEFAULT_MODELS_DIR)}
    assert set(entries) == {"churn-classifier", "tier-classifier"}
    tiers = entries["tier-classifier"]
    assert tiers.pipeline.dataset.target.task == "multiclass"
    assert tiers.pipeline.serving.local.port != entries["churn-classifier"].pipeline.serving.local.port
    assert tiers.serving_state_dir.name == "tier-classifier"
    assert tiers.dataset_uri.endswith("/tiers.csv")
    assert dag_id("tier-classifier", "retrain") == "tier-classifier.retrain"


def test_two_configs_claiming_one_name_or_port_are_both_refused(tmp_path: Path) -> None:
    folder = _models(
        tmp_path,
        a=_model("same-name", 9001),
        b=_model("same-name", 9002),
        c=_model("port-one", 9003),
        d=_model("port-two", 9003),
        e=_model("fine", 9004),
    )
    outcome = _by_file(folder)
    assert outcome["e"] == ("fine", None)
    for stem, other, field in (("a", "b", "registry.model_name 'same-name'"), ("c", "d", "serving.local.port 9003")):
        name, error = outcome[stem]
        assert name is None and field in error and str(folder / f"{other}.yaml") in error


def test_bad_model_configs_name_the_file_and_the_field(tmp_path: Path) -> None:
    folder = _models(
        tmp_path,
        missing_dataset=_model("x-one", 9001, dataset="nowhere"),
        no_name=f"dataset: {CONFIG / 'datasets' / 'churn.yaml'}\nserving: {{local: {{port: 9002}}}}\n",
        bad_name=_model("Bad_Name", 9003),
        wide=_model("x-four", 9004) + "runtime: {artifact_root: s3://elsewhere, kubernetes: {namespace: other}}\n",
        wrong_type=_model("x-five", 9005) + "training: {epochs: lots}\n",
        fine=_model("x-six", 9006),
    )
    outcome = _by_file(folder)
    assert outcome["fine"] == ("x-six", None)
    expected = {
        "missing_dataset": "config file not found",
        "no_name": "registry.model_name: missing",
        "bad_name": "'Bad_Name' is not a valid model name",
        "wide": "runtime.artifact_root: is deployment-wide",
        "wrong_type": "training.epochs",
    }
    for stem, phrase in expected.items():
        name, error = outcome[stem]
        assert name is None and phrase in error, (stem, error)
        assert error.startswith(f"{folder / stem}.yaml: "), error
    assert "runtime.kubernetes.namespace: is deployment-wide" in outcome["wide"][1]


def test_a_model_name_must_leave_room_for_its_kubernetes_object_names(tmp_path: Path) -> None:
    # model-server-<model>-canary, the longest name of a model's serving objects, is a 63-character DNS label at most.
    longest, too_long = "m" * MAX_MODEL_NAME_LENGTH, "m" * (MAX_MODEL_NAME_LENGTH + 1)
    outcome = _by_file(_models(tmp_path, fits=_model(longest, 9001), long=_model(too_long, 9002)))
    assert outcome["fits"] == (longest, None)
    name, error = outcome["long"]
    assert name is None
    assert error == (
        f"{tmp_path / 'long.yaml'}: registry.model_name {too_long!r} has {MAX_MODEL_NAME_LENGTH + 1} characters, at "
        f"most {MAX_MODEL_NAME_LENGTH} fit: its canary Deployment on Kubernetes is model-server-<model>-canary, and "
        "Kubernetes names have at most 63 characters; choose a shorter name"
    )


def test_an_empty_models_folder_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no model config in .*add one <model>.yaml per model"):
        load_models(tmp_path)


def test_a_model_may_extend_another_models_file_but_not_take_its_identity_from_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tiers-fast.yaml").write_text(
        f"extends: {DEFAULT_MODELS_DIR / 'tiers.yaml'}\ntraining: {{epochs: 2}}\n"
    )
    (tmp_path / "base" / "defaults-only.yaml").write_text(f"extends: {DEFAULT_CONFIG_PATH}\ntraining: {{epochs: 2}}\n")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "fast.yaml").write_text(f"extends: {tmp_path / 'base' / 'tiers-fast.yaml'}\n")
    (folder / "anonymous.yaml").write_text(f"extends: {tmp_path / 'base' / 'defaults-only.yaml'}\n")
    outcome = _by_file(folder)
    assert outcome["fast"] == ("tier-classifier", None)
    assert "dataset: missing" in outcome["anonymous"][1] and "registry.model_name: missing" in outcome["anonymous"][1]


def test_a_cycle_of_extends_is_refused_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    name, error = _by_file(tmp_path)["a"]
    assert name is None and "extends forms a cycle" in error
