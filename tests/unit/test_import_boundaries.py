"""What each part of mlsteps imports, so that each image installs only what its part needs.

The steps image has neither torch, XGBoost nor onnx (requirements/steps.txt): only the training code imports them,
and evaluate, register, score and drift run the exported ONNX model with ONNX Runtime. The serving image installs
requirements/serve.txt alone, so the model server must import without torch, XGBoost, scikit-learn and without
MLflow (it reads the registry over MLflow's REST API). Each probe imports in a fresh
interpreter where every installed package that an image lacks is hidden, as if not installed (a library's optional
imports then fall back as they do in the image), and reports the chain of mlsteps imports that loads a package it
must not.
"""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

import mlsteps

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
# Only these import torch, XGBoost and onnx; the train image (requirements/train.txt) has them.
TRAINING_CODE = ("mlsteps.training", "mlsteps.distributed", "mlsteps.steps.train")
LOCAL_CODE = {"mlsteps", "orchestration"}  # the project's own packages, copied into every image

# Runs in a fresh interpreter; argv[1] is JSON {"hidden": [...], "watched": [...]}, argv[2:] the modules to import.
# A None entry in sys.modules makes `import name` fail and importlib.util.find_spec(name) answer None, as for a
# package that is not installed. A finder that finds nothing notes who first imports a watched package. Prints, as
# JSON, the top-level modules loaded and the mlsteps lines that led to each watched one.
_PROBE = """
import importlib, json, sys, traceback

options = json.loads(sys.argv[1])
for name in options["hidden"]:
    sys.modules.setdefault(name, None)
chains = {}


class ImportRecorder:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in options["watched"] and top not in chains:
            ours = [f for f in traceback.extract_stack()[:-1] if "/mlsteps/" in f.filename]
            chains[top] = [f"{f.filename.rpartition('/include/')[2]}:{f.lineno} {f.line}" for f in ours]
        return None


sys.meta_path.insert(0, ImportRecorder())
for module in sys.argv[2:]:
    importlib.import_module(module)
loaded = sorted({name.partition(".")[0] for name, module in sys.modules.items() if module is not None})
print(json.dumps({"loaded": loaded, "chains": chains}))
"""


def _import(modules: list[str], hidden: set[str] = frozenset(), watched: set[str] = frozenset()) -> set[str]:
    """Import modules in a fresh interpreter with the hidden packages missing; the top-level modules it loaded.

    Fails with the traceback when an import needs a hidden package, and with the import chain of each watched
    package that was loaded.
    """
    options = json.dumps({"hidden": sorted(hidden), "watched": sorted(watched)})
    done = subprocess.run([sys.executable, "-c", _PROBE, options, *modules], capture_output=True, text=True)
    assert done.returncode == 0, f"an import needs a package the image does not install:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.splitlines()[-1])
    loaded = set(report["loaded"])
    chains = "\n".join(f"{name} <- " + " <- ".join(reversed(chain)) for name, chain in report["chains"].items())
    assert not loaded & watched, f"loaded {sorted(loaded & watched)}:\n{chains}"
    return loaded


def _mlsteps_modules() -> list[str]:
    """Every module of mlsteps but the ``__main__`` ones (importing ``mlsteps.__main__`` runs the CLI)."""
    found = pkgutil.walk_packages(mlsteps.__path__, prefix="mlsteps.")
    return sorted(module.name for module in found if not module.name.endswith(".__main__"))


def _is_training_code(module: str) -> bool:
    return any(module == part or module.startswith(f"{part}.") for part in TRAINING_CODE)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(*requirement_files: Path) -> set[str]:
    """The distributions requirement files install: their pins and, by the installed metadata, what those need."""
    pending = []
    for path in requirement_files:
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        pending += [Requirement(line).name for line in lines if line and not line.startswith("-")]
    found: set[str] = set()
    while pending:
        name = _normalise(pending.pop())
        if name in found:
            continue
        found.add(name)
        for text in requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def _packages_missing_from(distributions: set[str]) -> set[str]:
    """The installed top-level modules that no distribution of the set provides: what an image with only them lacks."""
    provided_by = packages_distributions()
    outside = {
        name for name, providers in provided_by.items() if not {_normalise(p) for p in providers} & distributions
    }
    return outside - LOCAL_CODE


def test_outside_the_training_code_nothing_imports_torch_xgboost_or_onnx() -> None:
    outside_training = [module for module in _mlsteps_modules() if not _is_training_code(module)]
    assert {"mlsteps.steps.evaluate", "mlsteps.steps.score", "mlsteps.serve.app"} <= set(outside_training)
    loaded = _import(outside_training, watched={"torch", "xgboost", "onnx"})
    assert {"mlsteps", "numpy", "pydantic"} <= loaded


def test_the_steps_import_with_only_what_the_steps_image_installs() -> None:
    steps = _distributions(REQUIREMENTS / "steps.txt")
    assert not {"torch", "xgboost", "xgboost-cpu", "onnx", "onnxscript", "onnxmltools", "skl2onnx"} & steps
    missing = _packages_missing_from(steps)
    # The steps are clients of the MLflow server: mlflow-skinny, without the server's Flask and matplotlib.
    assert {"torch", "xgboost", "onnx", "onnxscript", "onnxmltools", "skl2onnx", "flask", "matplotlib"} <= missing
    # The model server has its own image (requirements/serve.txt); the steps image does not run it.
    steps_modules = [m for m in _mlsteps_modules() if not _is_training_code(m) and not m.startswith("mlsteps.serve.")]
    assert {"mlsteps.steps.evaluate", "mlsteps.steps.register", "mlsteps.steps.score"} <= set(steps_modules)
    loaded = _import(steps_modules, hidden=missing)
    assert {"mlsteps", "numpy", "pydantic"} <= loaded


def test_the_model_server_imports_with_only_what_the_serving_image_installs() -> None:
    serving = _distributions(REQUIREMENTS / "serve.txt")
    # No MLflow at all: the server reads the registry over MLflow's REST API (mlsteps.serve.registry_client).
    assert not {"mlflow", "mlflow-skinny", "databricks-sdk", "gitpython", "scikit-learn", "torch"} & serving
    missing = _packages_missing_from(serving)
    assert {"mlflow", "databricks", "git", "torch", "xgboost", "sklearn", "flask", "sqlalchemy"} <= missing
    serve_modules = [module for module in _mlsteps_modules() if module.startswith("mlsteps.serve.")]
    assert {"mlsteps.serve.app", "mlsteps.serve.cli", "mlsteps.serve.model", "mlsteps.serve.registry_client"} <= set(
        serve_modules
    )
    loaded = _import(serve_modules, hidden=missing)
    assert {"fastapi", "numpy", "mlsteps"} <= loaded
