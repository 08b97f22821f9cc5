"""Which class trains a model family: ``training.model`` is ``mlp``, ``gbdt`` or your own trainer ``module:Class``.

Built-in families are imported by name too, so a run imports torch only for mlp and XGBoost only for gbdt.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from mlsteps.errors import ConfigError
from mlsteps.training.api import REQUIRED_METHODS, TrainerContext

if TYPE_CHECKING:
    from mlsteps.config import TargetSpec, TrainingConfig
    from mlsteps.data.features import TabularPreprocessor

BUILT_IN = {"mlp": "mlsteps.training.mlp:MlpTrainer", "gbdt": "mlsteps.training.gbdt:GbdtTrainer"}


def load_trainer(name: str) -> type:
    """The trainer class of ``training.model``.

    Args:
        name: ``mlp``, ``gbdt`` or ``module:Class``, a class implementing ``mlsteps.training.api.TabularTrainer``
            in a module on the Python path.

    Returns:
        The class; the train step constructs it with a ``TrainerContext``.

    Raises:
        ConfigError: the module does not import, has no such class, or the class lacks fit, predict or to_onnx.
    """
    module_name, _, class_name = BUILT_IN.get(name, name).partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"training.model {name!r}: use one of {list(BUILT_IN)} or your own trainer as module:Class")
    try:
        module = importlib.import_module(module_name)
    # Importing runs the module's code: any error there (a missing dependency, a syntax error) is the user's to fix.
    except Exception as error:
        raise ConfigError(
            f"training.model {name!r}: cannot import module {module_name!r}: {type(error).__name__}: {error}. "
            "Put the folder that holds it on PYTHONPATH (locally), or add it and its requirements to the train image."
        ) from error
    trainer = getattr(module, class_name, None)
    if trainer is None:
        classes = sorted(attribute for attribute, value in vars(module).items() if inspect.isclass(value))
        raise ConfigError(
            f"training.model {name!r}: module {module_name!r} has no {class_name!r}; its classes are {classes}"
        )
    if not inspect.isclass(trainer):
        raise ConfigError(f"training.model {name!r}: {class_name!r} is a {type(trainer).__name__}, not a class")
    missing = [method for method in REQUIRED_METHODS if not callable(getattr(trainer, method, None))]
    if missing:
        raise ConfigError(
            f"training.model {name!r}: class {class_name!r} lacks the method(s) {missing} of a trainer "
            f"(mlsteps.training.api.TabularTrainer: {', '.join(REQUIRED_METHODS)})"
        )
    return trainer


def family_params(training_config: TrainingConfig, name: str) -> dict[str, Any]:
    """The family's settings (``TrainerContext.params``): ``training.gbdt`` for gbdt, the whole ``training`` section
    for mlp (its hyper-parameters are ``training``'s own fields), ``training.params`` for your own trainer."""
    if name == "gbdt":
        return training_config.gbdt.model_dump()
    if name == "mlp":
        return training_config.model_dump()
    return dict(training_config.params)


def trainer_context(
    training: TrainingConfig,
    family: str,
    target: TargetSpec,
    preprocessor: TabularPreprocessor,
    device: str,
    **run: Any,
) -> TrainerContext:
    """What a family's trainer is told: the task, the preprocessor's columns, the seed and the family's settings
    (``family_params``), plus the run's own fields (``work_dir``, ``log_metrics``, ``checkpoint_dir``,
    ``resume_key``)."""
    return TrainerContext(
        task=target.task,
        classes=list(target.classes or []),
        numeric_columns=preprocessor.numeric_columns,
        categorical_columns=preprocessor.categorical_columns,
        cardinalities=preprocessor.cardinalities,
        seed=training.seed,
        device=device,
        params=family_params(training, family),
        **run,
    )
