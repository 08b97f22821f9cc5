"""The MLflow model package of every family: the fitted preprocessor and the ONNX model, run with ONNX Runtime.

Whatever trained the model (the network, XGBoost, your own trainer), the train step exported it to ONNX and checked
the export against the native model, so the package holds exactly what evaluation scores and the server serves.
Loading it needs ONNX Runtime, numpy and pandas, never torch or XGBoost.

``TabularModel`` must stay in this importable module: MLflow pickles the python model by reference, so whoever loads
the package (evaluation, scoring, ``mlflow models serve``) imports it from here.

Artifacts: ``preprocessor.json`` (``TabularPreprocessor``), ``model.onnx`` (the contract of
``mlsteps.evaluation.tasks``: inputs ``numeric`` and ``categories``, output ``probabilities`` or ``prediction``),
``task.json`` (``TaskInfo``), ``reference_profile.npz`` (the drift reference) and, for classification,
``calibrator.json`` (``mlsteps.monitoring.performance.Calibrator``, fitted on the validation split: performance
estimation before labels arrive). ``predict`` returns the task's predict contract
(``mlsteps.evaluation.tasks.output_frame``).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from mlsteps.data.features import TabularPreprocessor
from mlsteps.inference import TaskInfo, onnx_session, predict_frame

if TYPE_CHECKING:
    import onnx

PREPROCESSOR_ARTIFACT = "preprocessor"
ONNX_ARTIFACT = "onnx_model"
ONNX_FILE = "model.onnx"
TASK_ARTIFACT = "task"
TASK_FILE = "task.json"
# The training data's drift reference (mlsteps.monitoring.drift), kept in the package so a drift check needs only
# the model.
REFERENCE_PROFILE_ARTIFACT = "reference_profile"
REFERENCE_PROFILE_FILE = "reference_profile.npz"
# Classification only: the probabilities' calibration on the validation split, for performance estimation.
CALIBRATOR_ARTIFACT = "calibrator"
CALIBRATOR_FILE = "calibrator.json"
# Logged by evaluate on the challenger's training run (not in the package: the holdout is scored after training): its
# holdout labels and outputs, the champion's expected performance and sampling error for the performance monitor.
PERFORMANCE_REFERENCE_DIR = "performance_reference"
PERFORMANCE_REFERENCE_FILE = "holdout.npz"
# What loading and predicting imports (mlsteps itself travels as code). Listed rather than inferred: inference
# runs a slow subprocess.
RUNTIME_PACKAGES = ("mlflow", "onnxruntime", "numpy", "pandas", "cloudpickle")


class TabularModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc model: the fitted preprocessor and the ONNX model, applied to raw feature rows."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Read the preprocessor, the task and the ONNX model from the package's artifacts."""
        self.preprocessor = TabularPreprocessor.from_dict(
            json.loads(Path(context.artifacts[PREPROCESSOR_ARTIFACT]).read_text())
        )
        self.info = TaskInfo.from_dict(json.loads(Path(context.artifacts[TASK_ARTIFACT]).read_text()))
        self.session = onnx_session(context.artifacts[ONNX_ARTIFACT])

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """The task's predict contract for each raw input row (``mlsteps.evaluation.tasks.output_frame``).

        Args:
            context: the MLflow model context (artifacts are loaded in ``load_context``).
            model_input: raw feature columns; nulls and unseen categories are allowed.
            params: unused; accepted for the pyfunc interface.
        """
        return predict_frame(self.preprocessor, self.session, self.info, model_input)


def model_signature(example: pd.DataFrame, prediction: pd.DataFrame) -> ModelSignature:
    """The signature inferred from raw example rows, with every feature column required.

    Inference marks columns that hold nulls in the example as optional (may be absent); the preprocessor needs
    every column, so all are required, while null values stay allowed in any column.
    """
    with warnings.catch_warnings():
        # The hint about integer columns and nulls concerns an integer ``prediction`` output, which is never null.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        inferred = infer_signature(example, prediction)
    inputs = Schema([ColSpec(spec.type, spec.name, required=True) for spec in inferred.inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def pinned_requirements() -> list[str]:
    """The installed versions of the runtime packages, without local labels such as ``+cpu``.

    MLflow is pinned as the distribution that provides the module here: full ``mlflow`` where it is installed (the
    local environment), else ``mlflow-skinny`` (the images), which has all that loading the package needs.
    """
    from importlib.metadata import PackageNotFoundError

    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            if package != "mlflow":
                raise
            pins.append(f"mlflow-skinny=={version('mlflow-skinny')}")
    return pins


def log_model_package(
    preprocessor: TabularPreprocessor,
    onnx_model: onnx.ModelProto,
    info: TaskInfo,
    example: pd.DataFrame,
    reference_profile: Path,
    calibrator: dict[str, Any] | None = None,
) -> Any:
    """Log the pyfunc model (preprocessor, ONNX model, task, drift reference, calibrator, signature, input example)
    to the active run.

    The ``mlsteps`` package is bundled as code, so the model also loads where ``mlsteps`` is not installed
    (for example ``mlflow models serve``).

    Args:
        preprocessor: the fitted preprocessor.
        onnx_model: the exported model in the ONNX contract, already checked against the native model.
        info: the task, its classes, the target column and the family.
        example: a few raw feature rows, typed as serving will send them.
        reference_profile: the saved ``mlsteps.monitoring.drift`` profile of the training data and the model's outputs.
        calibrator: ``Calibrator.to_dict()`` of a classifier's validation-split calibration; None for regression.

    Returns:
        MLflow's ``ModelInfo``; its ``model_uri`` loads with ``mlflow.pyfunc.load_model``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "preprocessor.json").write_text(json.dumps(preprocessor.to_dict(), indent=2))
        (folder / TASK_FILE).write_text(json.dumps(asdict(info), indent=2))
        (folder / ONNX_FILE).write_bytes(onnx_model.SerializeToString())
        artifacts = {
            PREPROCESSOR_ARTIFACT: str(folder / "preprocessor.json"),
            TASK_ARTIFACT: str(folder / TASK_FILE),
            ONNX_ARTIFACT: str(folder / ONNX_FILE),
            REFERENCE_PROFILE_ARTIFACT: str(reference_profile),
        }
        if calibrator is not None:
            (folder / CALIBRATOR_FILE).write_text(json.dumps(calibrator))
            artifacts[CALIBRATOR_ARTIFACT] = str(folder / CALIBRATOR_FILE)
        session = onnx_session(folder / ONNX_FILE)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TabularModel(),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).resolve().parent)],
            signature=model_signature(example, predict_frame(preprocessor, session, info, example)),
            input_example=example,
            pip_requirements=pinned_requirements(),
        )


@dataclass(frozen=True)
class ModelPackage:
    """A downloaded model package, read into what the serving bundle needs."""

    preprocessor: TabularPreprocessor
    onnx_path: Path
    info: TaskInfo
    example: pd.DataFrame
    columns: list[tuple[str, str]]  # (name, MLflow type) of each request column, in signature order
    calibrator: dict[str, Any] | None  # Calibrator.to_dict(); None for regression and packages logged before it


def read_package(package_dir: Path) -> ModelPackage:
    """Read a downloaded package folder (``mlflow.artifacts.download_artifacts`` of a model URI).

    Raises:
        FileNotFoundError: the folder is not a package of this format (it lacks the ONNX model or the task), or it
            has no signature or input example; retrain to make one.
    """
    from mlflow.models import Model

    package = Model.load(str(package_dir))
    artifacts = package.flavors["python_function"].get("artifacts", {})
    missing = [name for name in (PREPROCESSOR_ARTIFACT, ONNX_ARTIFACT, TASK_ARTIFACT) if name not in artifacts]
    example = package.load_input_example(str(package_dir))
    if missing or package.signature is None or example is None:
        raise FileNotFoundError(
            f"model package {package_dir} lacks {missing or 'its signature or input example'}: it was logged by an "
            "older version of mlsteps; retrain to make a servable package"
        )

    def path(name: str) -> Path:
        return package_dir / artifacts[name]["path"]

    return ModelPackage(
        preprocessor=TabularPreprocessor.from_dict(json.loads(path(PREPROCESSOR_ARTIFACT).read_text())),
        onnx_path=path(ONNX_ARTIFACT),
        info=TaskInfo.from_dict(json.loads(path(TASK_ARTIFACT).read_text())),
        example=example,
        columns=[(spec.name, spec.type.name) for spec in package.signature.inputs.inputs],
        calibrator=json.loads(path(CALIBRATOR_ARTIFACT).read_text()) if CALIBRATOR_ARTIFACT in artifacts else None,
    )


def download_package(model_uri: str, folder: Path) -> Path:
    """Fetch a whole model package (``models:/name/7``, ``models:/m-...``) into folder; its local path.

    The whole package (a few MB): MLflow resolves sub-paths of registered and logged models differently.
    """
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))


def reference_profile_path(package_dir: Path, model_uri: str) -> Path:
    """The drift reference profile in a downloaded package.

    Raises:
        FileNotFoundError: the package has no profile (logged before profiles existed); retrain to get one.
    """
    profile = package_dir / "artifacts" / REFERENCE_PROFILE_FILE
    if not profile.is_file():
        raise FileNotFoundError(f"{model_uri} has no drift reference profile; retrain to create one")
    return profile
