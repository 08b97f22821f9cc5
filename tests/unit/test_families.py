"""Which class trains ``training.model``: the built-in families, your own ``module:Class`` from the Python path, and
each way a trainer module can be wrong, named in a ConfigError (exit 2)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_gbdt import synthetic_split, trainer_context

from mlsteps.config import GbdtConfig, TrainingConfig
from mlsteps.errors import ConfigError
from mlsteps.training.families import family_params, load_trainer
from mlsteps.training.gbdt import GbdtTrainer

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINER = """
class Trainer:
    def __init__(self, context):
        self.context = context

    def fit(self, train, validation):
        return {}

    def predict(self, numeric, categories):
        return numeric

    def to_onnx(self, numeric, categories):
        return None
"""


@pytest.fixture
def trainer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Writes a module into a folder on sys.path; forgets the modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_the_built_in_families() -> None:
    assert load_trainer("gbdt") is GbdtTrainer
    assert load_trainer("mlp").__name__ == "MlpTrainer"


def test_your_own_trainer_loads_from_the_python_path(trainer_module) -> None:
    trainer_module("team_trainers", TRAINER)

    trainer = load_trainer("team_trainers:Trainer")

    assert trainer.__module__ == "team_trainers"
    assert trainer(context=None).fit(None, None) == {}


def test_the_worked_example_loads_and_stops_on_validation(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    example = load_trainer("examples.trainers.sklearn_gbt:GradientBoostingTrainer")
    train = synthetic_split("regression", 400, seed=1, learnable=False)
    validation = synthetic_split("regression", 200, seed=2, learnable=False)
    logged: list = []

    metrics = example(trainer_context("regression", {"n_estimators": 100}, logged=logged)).fit(train, validation)

    assert len(logged) == 100
    assert metrics["trees"] < 100
    assert metrics["val_loss"] == min(values["val_loss"] for _, values in logged)


def test_a_module_that_does_not_import_names_it_and_the_error(trainer_module) -> None:
    trainer_module("needs_a_package", "import package_that_is_not_installed\n" + TRAINER)

    with pytest.raises(ConfigError) as missing_module:
        load_trainer("no_such_trainers:Trainer")
    with pytest.raises(ConfigError) as missing_dependency:
        load_trainer("needs_a_package:Trainer")

    assert str(missing_module.value) == (
        "training.model 'no_such_trainers:Trainer': cannot import module 'no_such_trainers': ModuleNotFoundError: "
        "No module named 'no_such_trainers'. Put the folder that holds it on PYTHONPATH (locally), or add it and its "
        "requirements to the train image."
    )
    assert "module 'needs_a_package': ModuleNotFoundError: No module named 'package_that_is_not_installed'" in str(
        missing_dependency.value
    )


def test_a_missing_class_lists_the_classes_the_module_has(trainer_module) -> None:
    trainer_module("team_trainers_typo", TRAINER)

    with pytest.raises(
        ConfigError, match=r"module 'team_trainers_typo' has no 'Trainr'; its classes are \['Trainer'\]"
    ):
        load_trainer("team_trainers_typo:Trainr")


def test_a_class_without_the_trainer_methods_names_the_missing_ones(trainer_module) -> None:
    trainer_module("half_trainers", TRAINER.replace("def to_onnx", "def export") + "\nhelper = print\n")

    with pytest.raises(ConfigError, match=r"class 'Trainer' lacks the method\(s\) \['to_onnx'\]"):
        load_trainer("half_trainers:Trainer")
    with pytest.raises(ConfigError, match=r"'helper' is a builtin_function_or_method, not a class"):
        load_trainer("half_trainers:helper")


def test_a_name_that_is_neither_a_family_nor_module_and_class() -> None:
    with pytest.raises(ConfigError, match=r"training.model 'xgboost': use one of \['mlp', 'gbdt'\] or your own"):
        load_trainer("xgboost")


def test_each_family_gets_its_own_settings() -> None:
    training = TrainingConfig(gbdt=GbdtConfig(max_depth=4), params={"n_estimators": 50})

    assert family_params(training, "gbdt") == {**GbdtConfig().model_dump(), "max_depth": 4}
    assert family_params(training, "mlp") == training.model_dump()
    assert family_params(training, "examples.trainers.sklearn_gbt:GradientBoostingTrainer") == {"n_estimators": 50}
