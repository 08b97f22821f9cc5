"""The tabular network's MLflow model package (the network itself is ``mlsteps.training.mlp``).

``TabularClassifier`` must stay in this importable module: MLflow pickles the python model by reference, so
whoever loads the package (evaluation, the model server) imports it from here.

The predict contract (used by evaluation and serving, keep it stable): a DataFrame of raw feature columns in,
a DataFrame with ``probability`` (float64, positive class) and ``prediction`` (int64, probability >= 0.5) out,
one row per input row.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from mlsteps.data.features import TabularPreprocessor
from mlsteps.training.mlp import TabularNet, load_network, predict_logits, save_network

DECISION_THRESHOLD = 0.5
PREPROCESSOR_ARTIFACT = "preprocessor"
NETWORK_ARTIFACT = "network"
# The training data's drift reference (mlsteps.drift), kept in the package so a drift check needs only the model.
REFERENCE_PROFILE_ARTIFACT = "reference_profile"
REFERENCE_PROFILE_FILE = "reference_profile.npz"
# What loading and predicting imports (mlsteps itself travels as code). Listed rather than inferred: inference
# runs a slow subprocess and misses torch, which mlsteps.model imports.
RUNTIME_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "cloudpickle")


def predict_frame(preprocessor: TabularPreprocessor, network: TabularNet, frame: pd.DataFrame) -> pd.DataFrame:
    """Raw feature rows in, ``probability`` and ``prediction`` out (the model package's predict contract)."""
    numeric, categories = preprocessor.transform(frame)
    device = next(network.parameters()).device
    logits = predict_logits(network, torch.from_numpy(numeric).to(device), torch.from_numpy(categories).to(device))
    probability = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
    return pd.DataFrame(
        {"probability": probability, "prediction": (probability >= DECISION_THRESHOLD).astype(np.int64)},
        index=frame.index,
    )


class TabularClassifier(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc model: the fitted preprocessor and the network, applied to raw feature rows on CPU."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the preprocessor JSON and the network file from the package's artifacts."""
        payload = json.loads(Path(context.artifacts[PREPROCESSOR_ARTIFACT]).read_text())
        self.preprocessor = TabularPreprocessor.from_dict(payload)
        self.network = load_network(context.artifacts[NETWORK_ARTIFACT], "cpu")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Probability of the positive class and the 0/1 prediction for each raw input row.

        Args:
            context: the MLflow model context (artifacts are loaded in ``load_context``).
            model_input: raw feature columns; nulls and unseen categories are allowed.
            params: unused; accepted for the pyfunc interface.

        Returns:
            A DataFrame with ``probability`` (float64) and ``prediction`` (int64), indexed like the input.
        """
        return predict_frame(self.preprocessor, self.network, model_input)


def model_signature(example: pd.DataFrame, prediction: pd.DataFrame) -> ModelSignature:
    """The signature inferred from raw example rows, with every feature column required.

    Inference marks columns that hold nulls in the example as optional (may be absent); the preprocessor needs
    every column, so all are required, while null values stay allowed in any column.
    """
    with warnings.catch_warnings():
        # The hint about integer columns and nulls concerns the int64 ``prediction`` output, which is never null.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        inferred = infer_signature(example, prediction)
    inputs = Schema([ColSpec(spec.type, spec.name, required=True) for spec in inferred.inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def pinned_requirements() -> list[str]:
    """The installed versions of the runtime packages, without local labels such as ``+cpu``."""
    return [f"{package}=={version(package).split('+')[0]}" for package in RUNTIME_PACKAGES]


def log_model_package(
    preprocessor: TabularPreprocessor, network: TabularNet, example: pd.DataFrame, reference_profile: Path
) -> Any:
    """Log the pyfunc model (preprocessor, network, drift reference, signature, input example) to the active run.

    The ``mlsteps`` package is bundled as code, so the model also loads where ``mlsteps`` is not installed
    (for example ``mlflow models serve``).

    Args:
        preprocessor: the fitted preprocessor.
        network: the trained network (best weights).
        example: a few raw feature rows, typed as serving will send them.
        reference_profile: the saved ``mlsteps.drift`` profile of the training data and the model's scores.

    Returns:
        MLflow's ``ModelInfo``; its ``model_uri`` loads with ``mlflow.pyfunc.load_model``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        preprocessor_path = Path(tmp) / "preprocessor.json"
        preprocessor_path.write_text(json.dumps(preprocessor.to_dict(), indent=2))
        artifacts = {
            PREPROCESSOR_ARTIFACT: str(preprocessor_path),
            NETWORK_ARTIFACT: str(save_network(network, Path(tmp) / "network.pt")),
            REFERENCE_PROFILE_ARTIFACT: str(reference_profile),
        }
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TabularClassifier(),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).resolve().parent)],
            signature=model_signature(example, predict_frame(preprocessor, network, example)),
            input_example=example,
            pip_requirements=pinned_requirements(),
        )


def download_reference_profile(model_uri: str, folder: Path) -> Path:
    """Fetch a model package (``models:/name@alias``, ``models:/m-...``) into folder; return its drift profile.

    The whole package is fetched (a few MB): MLflow resolves sub-paths of registered and logged models differently.

    Raises:
        FileNotFoundError: the package has no profile (logged before profiles existed); retrain to get one.
    """
    import mlflow.artifacts

    package = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    profile = package / "artifacts" / REFERENCE_PROFILE_FILE
    if not profile.is_file():
        raise FileNotFoundError(f"{model_uri} has no drift reference profile; retrain to create one")
    return profile
