"""
### <model>.retrain: snapshot, validate, train, evaluate and promote a model

Runs on the model's cron (`runtime.retrain_cron`); when `<model>.monitor` emits the `<model>.monitor_alert` asset
(input drift, a realized or an estimated performance drop); when new training data arrives (the
`<dataset>.training_data` asset: an upstream DAG's outlet, `POST /api/v2/assets/events`, or object-store
notifications on a queue); or from the UI with the params below. The MLflow run and the model version record what
started it (`trigger`: the signal, `new_data`, `scheduled` or `manual`; `trigger_reason` with its figures;
`monitor_report`, `drifted_features`). Scheduled and asset-triggered runs use the defaults, which come from the
model's config.

| param | what it changes |
| --- | --- |
| `dataset_uri` | the CSV or Parquet file trained on (absolute path, `file://` or `s3://`) |
| `candidates` | the model families trained, one pod each; the best on the holdout becomes the challenger |
| `epochs`, `learning_rate` | the network's (`mlp`) training; other families ignore them |
| `primary_metric` | the holdout metric that picks the challenger and that the gate judges (this model's task's) |
| `threshold` | the bar the challenger must reach (at most, for a metric where lower is better); empty: none |
| `max_degradation`, `degradation` | how much worse than the champion still promotes, absolute or relative |
| `force_promotion` | promote even when the gate fails (recorded on the version) |

| step | what it does | output (under the run folder) |
| --- | --- | --- |
| `snapshot` | CSV/Parquet (local or `s3://`) to a content-addressed Parquet snapshot | `snapshot/result.json` |
| `data_check` | stops a run (not a manual one) on the champion's own data, or on an event that is not new data | |
| `validate` | Great Expectations suite from the dataset config; stops on bad data | `validate/report.html` |
| `preprocess` | time or hash split; preprocessing fitted on the train split only | `preprocess/*.parquet` |
| `candidates` | one `--model <family>` per entry of `candidates`: one mapped `train` task each | |
| `train` | one family (mlp, gbdt or your own trainer), exported to ONNX and checked | `train/<family>/`, MLflow |
| `evaluate` | every candidate and the champion on one holdout; the best is challenger; the gate | `evaluate/` |
| `register` | new model version in the MLflow registry, alias `challenger` | model version |
| `gate` | branches on the gate: `promote` or `reject` | |
| `promote` | moves alias `champion`, if it did not move since evaluation; emits `model_promoted` | alias |
| `summary` | the run's outcome (`promoted`, `rejected` or `failed`), also after a failure | `summary.json` |

Bad data stops the run at `validate` (or `snapshot`) without retries; the registry and the champion stay unchanged,
and `summary.json` names the failed task and its message. A run stopped by `data_check` ends `unchanged`, saying why.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.python import BranchPythonOperator, ShortCircuitOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, chain, dag

from mlsteps.evaluation.tasks import METRICS
from orchestration.assets import model_assets
from orchestration.contracts import CANDIDATES_TASK, DATA_CHECK_TASK, PROMOTE_TASK, REJECT_TASK
from orchestration.failures import summary_task
from orchestration.models import dag_id, dag_tags, models_to_build
from orchestration.pod_task import attach_params, dag_default_args, pod_task, python_task
from orchestration.retrain import TRIGGER_TAG_ARGS, RetrainTriggers, format_summary, model_families, summarize
from orchestration.settings import Settings
from orchestration.templates import TEMPLATE_MACROS

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def candidate_arguments(params: dict | None = None) -> list[list[str]]:
    """One ``--model`` argument per candidate family: each becomes a mapped ``train`` task."""
    return [["--model", family] for family in params["candidates"]]


def keep_champion() -> None:
    """The challenger stays registered as ``challenger``; the champion is unchanged."""


def run_params(settings: Settings) -> dict[str, Param]:
    """The run params of one model's retrain DAG: its trigger form, with the model's config as defaults."""
    training, evaluation = settings.pipeline.training, settings.pipeline.evaluation
    target_task = settings.pipeline.dataset.target.task
    return {
        "dataset_uri": Param(
            settings.dataset_uri,
            type="string",
            minLength=1,
            pattern=r"^(s3://|file://|/).+\.(csv|parquet|pq)$",
            title="Dataset",
            description="CSV or Parquet file to train on: an absolute path, file:// or s3:// URI.",
        ),
        "candidates": Param(
            training.candidate_families,
            type="array",
            minItems=1,
            uniqueItems=True,
            items={"type": "string", "enum": model_families(training, settings.step("train").nodes)},
            title="Model families",
            description="Model families to train, one pod each: mlp (the network), gbdt (XGBoost) or the "
            "configured own trainer. The best on the holdout's primary metric becomes the challenger.",
        ),
        "epochs": Param(
            training.epochs,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Epochs (mlp)",
            description="mlp: maximum training epochs.",
        ),
        "learning_rate": Param(
            training.learning_rate,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Learning rate (mlp)",
            description="mlp: AdamW learning rate.",
        ),
        "primary_metric": Param(
            settings.pipeline.primary_metric,
            type="string",
            enum=sorted(METRICS[target_task]),
            title="Gate metric",
            description=f"The gate's holdout metric ({target_task} task).",
        ),
        "threshold": Param(
            evaluation.threshold,
            type=["number", "null"],
            title="Gate threshold",
            description="The challenger's primary metric must reach this (at most this when lower is better); "
            "empty: no absolute bar.",
        ),
        "max_degradation": Param(
            evaluation.max_degradation,
            type="number",
            minimum=0,
            title="Largest worsening",
            description="Largest worsening of the primary metric versus the champion that still promotes.",
        ),
        "degradation": Param(
            evaluation.degradation,
            type="string",
            enum=["absolute", "relative"],
            title="Worsening measured as",
            description="max_degradation in the metric's units (absolute) or as a share of the champion's value.",
        ),
        "force_promotion": Param(
            False,
            type="boolean",
            title="Force promotion",
            description="Promote even if the gate fails (recorded on the model version). Use with care.",
        ),
    }


def build(settings: Settings) -> None:
    """The retrain DAG of one model."""
    retrain_dag_id = dag_id(settings.pipeline.registry.model_name, "retrain")
    assets = model_assets(settings)

    @dag(
        dag_id=retrain_dag_id,
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(settings.runtime.retrain_cron, timezone="UTC"),
            assets=assets.alert | assets.training_data,
        ),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=__doc__,
        tags=dag_tags(settings, "retrain"),
        default_args=dag_default_args(settings, light_task_minutes=10, max_retry_minutes=15),
        user_defined_macros={**TEMPLATE_MACROS, **RetrainTriggers(assets, settings.dataset_uri).macros()},
    )
    def ml_retrain() -> None:
        """Wire the retraining loop; see the module docstring."""
        # --- data: snapshot and validate ---
        snapshot = pod_task(
            "snapshot",
            settings=settings,
            args=["--input-uri", "{{ params.dataset_uri }}", "--snapshot-store", settings.snapshot_store],
        )

        def check_data(
            run_id: str | None = None, dag_run=None, triggering_asset_events=None, params: dict | None = None
        ) -> bool:
            """Go on unless the data is not new (see ``orchestration.retrain.data_check``); the reason is logged."""
            from orchestration.retrain import data_check

            triggers = RetrainTriggers(assets, params["dataset_uri"])
            stop = data_check(
                settings.run_root(retrain_dag_id, run_id),
                triggers.run_trigger(dag_run, triggering_asset_events),
                triggers.data_events(triggering_asset_events),
                params["dataset_uri"],
            )
            print(f"stopping: {stop}" if stop else "the data is new for this model: training")
            return stop is None

        data_check = python_task(
            check_data, task_id=DATA_CHECK_TASK, operator=ShortCircuitOperator, ignore_downstream_trigger_rules=False
        )
        validate = pod_task("validate", settings=settings)

        # --- training: one pod per candidate family (dynamic task mapping) ---
        preprocess = pod_task("preprocess", settings=settings)

        candidates = python_task(candidate_arguments, task_id=CANDIDATES_TASK)
        train = pod_task(
            "train",
            settings=settings,
            args=[
                "--epochs",
                "{{ params.epochs }}",
                "--learning-rate",
                "{{ params.learning_rate }}",
                "--tag",
                "airflow_run_id={{ run_id }}",
                *TRIGGER_TAG_ARGS,
            ],
            expand_over=candidates.output,
        )

        # --- evaluation and promotion ---
        evaluate = pod_task(
            "evaluate",
            settings=settings,
            args=[
                "--candidates",
                "{{ params.candidates | join(',') }}",
                "--primary-metric",
                "{{ params.primary_metric }}",
                "--threshold",
                "{{ 'none' if params.threshold is none else params.threshold }}",
                "--max-degradation",
                "{{ params.max_degradation }}",
                "--degradation",
                "{{ params.degradation }}",
            ],
        )
        register = pod_task("register", settings=settings)

        def follow_gate(run_id: str | None = None, params: dict | None = None) -> str:
            """Follow the gate decision of ``evaluate``: ``promote`` or ``reject``."""
            from orchestration.retrain import promotion_branch

            return promotion_branch(settings.run_root(retrain_dag_id, run_id), force=params["force_promotion"])

        gate = python_task(follow_gate, task_id="gate", operator=BranchPythonOperator)
        promote = pod_task(
            "promote",
            settings=settings,
            task_id=PROMOTE_TASK,
            args=["{{ '--force' if params.force_promotion else '--no-force' }}"],
            outlets=[assets.promoted],
        )

        reject = python_task(keep_champion, task_id=REJECT_TASK)

        # --- the run's outcome, whatever happened ---
        summary = summary_task(retrain_dag_id, summarize, format_summary)

        chain(
            snapshot,
            data_check,
            validate,
            preprocess,
            candidates,
            train,
            evaluate,
            register,
            gate,
            [promote, reject],
            summary,
        )

    attach_params(ml_retrain(), run_params(settings))  # after the tasks: see attach_params


for _settings in models_to_build("retrain"):
    build(_settings)
