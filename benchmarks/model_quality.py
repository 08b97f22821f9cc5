"""Model quality per task: every family's holdout primary metric and training time, beside a plain scikit-learn
``HistGradientBoostingClassifier``/``Regressor`` (the anchor) on the same split, in one run.

For each task it uses the built-in generator's data and a real dataset that ships inside scikit-learn (nothing is
downloaded): binary churn and breast cancer, multiclass tiers and handwritten digits, regression claims and
diabetes. Every dataset goes through the pipeline's own preprocessor (fitted on the train split) and its own target
encoding; each family trains exactly as the train step runs it (``mlsteps.training`` trainers, default settings of
``include/config/pipeline.yaml``), and is scored with ``mlsteps.evaluation.metrics.task_metrics`` on the holdout.
The anchor gets the same matrices, with the category columns declared categorical, and its default settings.

    python benchmarks/model_quality.py            # every dataset (about 10 minutes on 2 cores)
    python benchmarks/model_quality.py --smoke    # small samples, 2 epochs: checks that it runs (a minute)

The goal: on every dataset, the best family at least matches the anchor (the verdict column says so).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "include"), str(Path(__file__).resolve().parents[1])]

from record import write_report  # noqa: E402

from mlsteps.config import DatasetConfig, load_dataset_config, load_pipeline_config  # noqa: E402
from mlsteps.data.datasets import BUILT_IN  # noqa: E402
from mlsteps.data.features import TabularPreprocessor  # noqa: E402
from mlsteps.evaluation.metrics import task_metrics  # noqa: E402
from mlsteps.evaluation.tasks import DEFAULT_PRIMARY_METRIC, METRICS, encode_target  # noqa: E402
from mlsteps.training.api import TrainingData  # noqa: E402
from mlsteps.training.families import load_trainer, trainer_context  # noqa: E402

FAMILIES = ("mlp", "gbdt", "examples.trainers.sklearn_gbt:GradientBoostingTrainer")
SHORT_NAMES = {FAMILIES[2]: "own: sklearn GB"}
ANCHOR = "anchor: sklearn HGB"
SPLIT = (0.70, 0.15)  # train and validation shares; the rest is the holdout
SEED = 42


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset: its rows and the dataset config that describes them."""

    name: str
    frame: pd.DataFrame
    config: DatasetConfig


def built_in(task: str, rows: int) -> Dataset:
    """The built-in generator's data for the task, with its shipped dataset config."""
    spec = BUILT_IN[task]
    config = load_dataset_config(str(spec.config_path))
    return Dataset(f"{spec.name} (built-in)", spec.generate(rows, seed=SEED), config)


def shipped(task: str) -> Dataset:
    """A real dataset that ships inside scikit-learn, with a dataset config of its numeric columns."""
    from sklearn import datasets

    loader, name = {
        "binary": (datasets.load_breast_cancer, "breast cancer"),
        "multiclass": (datasets.load_digits, "digits"),
        "regression": (datasets.load_diabetes, "diabetes"),
    }[task]
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns=lambda column: str(column).replace(" ", "_"))
    target = "target"
    features = [{"name": column, "type": "numeric"} for column in frame.columns if column != target]
    classes = sorted(frame[target].unique().tolist()) if task != "regression" else None
    config = DatasetConfig.model_validate(
        {
            "name": name.replace(" ", "_"),
            "target": {"name": target, "task": task, "classes": classes},
            "features": features,
        }
    )
    return Dataset(f"{name} (sklearn)", frame, config)


def split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A seeded random 70/15/15 split (the same for every family and the anchor)."""
    order = np.random.default_rng(SEED).permutation(len(frame))
    train_end, validation_end = (int(share * len(frame)) for share in (SPLIT[0], SPLIT[0] + SPLIT[1]))
    parts = {
        "train": order[:train_end],
        "validation": order[train_end:validation_end],
        "holdout": order[validation_end:],
    }
    return {name: frame.iloc[rows].reset_index(drop=True) for name, rows in parts.items()}


def matrices(dataset: Dataset) -> tuple[TabularPreprocessor, dict[str, TrainingData]]:
    """The preprocessor fitted on the train split, and every split as the trainers see it."""
    config = dataset.config
    parts = split(dataset.frame)
    preprocessor = TabularPreprocessor.fit(parts["train"], config.numeric_features, config.categorical_features)
    target = config.target
    data = {
        name: TrainingData(
            *preprocessor.transform(part), encode_target(part[target.name], target.task, target.classes, name)
        )
        for name, part in parts.items()
    }
    return preprocessor, data


def train_family(family: str, dataset: Dataset, preprocessor: TabularPreprocessor, data: dict, training: Any) -> dict:
    """Fit one family as the train step does; its holdout metrics and fit seconds."""
    target = dataset.config.target
    with tempfile.TemporaryDirectory() as work:
        context = trainer_context(
            training,
            family,
            target,
            preprocessor,
            "cpu",
            work_dir=work,
            checkpoint_dir=str(Path(work) / "checkpoints"),
            resume_key={"run_root": work},
        )
        trainer = load_trainer(family)(context)
        started = time.perf_counter()
        trainer.fit(data["train"], data["validation"])
        seconds = time.perf_counter() - started
        holdout = data["holdout"]
        output = trainer.predict(holdout.numeric, holdout.categories)
    return {"seconds": seconds, "metrics": task_metrics(target.task, target.classes, holdout.target, output, 10)}


def train_anchor(dataset: Dataset, preprocessor: TabularPreprocessor, data: dict) -> dict:
    """scikit-learn's HistGradientBoosting with its defaults on the train split, category columns as categories."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    target = dataset.config.target
    numeric = len(preprocessor.numeric_columns)
    categorical = [False] * numeric + [True] * len(preprocessor.categorical_columns)
    estimator = HistGradientBoostingRegressor if target.task == "regression" else HistGradientBoostingClassifier
    model = estimator(categorical_features=categorical if any(categorical) else None, random_state=SEED)
    started = time.perf_counter()
    model.fit(data["train"].features, data["train"].target)
    seconds = time.perf_counter() - started
    features = data["holdout"].features
    output = model.predict(features) if target.task == "regression" else model.predict_proba(features)
    return {
        "seconds": seconds,
        "metrics": task_metrics(target.task, target.classes, data["holdout"].target, output, 10),
    }


def run(smoke: bool) -> dict[str, Any]:
    """Every dataset of every task: each family and the anchor side by side."""
    training = load_pipeline_config(overrides={"training": {"epochs": 2} if smoke else {}}).training
    rows = 3000 if smoke else 20000
    figures: list[dict[str, Any]] = []
    for task in METRICS:
        sets = [built_in(task, rows)] + ([] if smoke else [shipped(task)])
        for dataset in sets:
            preprocessor, data = matrices(dataset)
            metric = DEFAULT_PRIMARY_METRIC[task]
            scores = {ANCHOR: train_anchor(dataset, preprocessor, data)}
            for family in FAMILIES:
                scores[SHORT_NAMES.get(family, family)] = train_family(family, dataset, preprocessor, data, training)
            figures.append(
                {
                    "dataset": dataset.name,
                    "task": task,
                    "rows": len(dataset.frame),
                    "primary_metric": metric,
                    "higher_is_better": METRICS[task][metric].higher_is_better,
                    "results": {
                        name: {"value": result["metrics"][metric], "seconds": round(result["seconds"], 2)}
                        for name, result in scores.items()
                    },
                }
            )
            print_dataset(figures[-1])
    return {"datasets": figures}


def verdict(entry: dict[str, Any]) -> str:
    """Whether the best family at least matches the anchor on this dataset."""
    results, higher = entry["results"], entry["higher_is_better"]
    families = {name: result["value"] for name, result in results.items() if name != ANCHOR}
    best = (max if higher else min)(families, key=families.get)
    anchor = results[ANCHOR]["value"]
    matches = families[best] >= anchor if higher else families[best] <= anchor
    return f"best {best} {families[best]:.4f} vs anchor {anchor:.4f}: {'matches' if matches else 'BELOW the anchor'}"


def print_dataset(entry: dict[str, Any]) -> None:
    """One dataset's rows: every family and the anchor, metric and fit seconds side by side."""
    direction = "higher" if entry["higher_is_better"] else "lower"
    metric = f"{entry['primary_metric']} ({direction} is better)"
    print(f"\n{entry['dataset']}: {entry['task']}, {entry['rows']} rows, {metric}")
    for name, result in entry["results"].items():
        print(f"  {name:<20} {result['value']:>10.4f}  {result['seconds']:>8.2f} s")
    print(f"  -> {verdict(entry)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small samples and 2 epochs: checks that it runs")
    args = parser.parse_args(argv)
    figures = run(args.smoke)
    print("\nsummary:")
    for entry in figures["datasets"]:
        print(f"  {entry['dataset']:<26} {verdict(entry)}")
    write_report("model_quality", {"smoke": args.smoke, "families": list(FAMILIES), "split": SPLIT}, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
