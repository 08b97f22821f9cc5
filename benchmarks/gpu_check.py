"""GPU check: the project's network trained on CUDA with bf16 autocast is as good as the same training on CPU.

``make gpu-check`` (``python benchmarks/gpu_check.py [--rows 100000] [--epochs 5]``). Everything trains with the
train step's own code, ``mlsteps.training.trainer.Trainer`` (the network ``mlsteps.training.mlp.TabularNet``, AdamW
with the configured settings, bf16 autocast on CUDA, early stopping on validation loss, the best epoch's weights),
on the pipeline's data path: churn rows from ``mlsteps.data.datasets.generate_churn``, the time split with the
configured fractions, the ``TabularPreprocessor`` fitted on the train split; settings from
``include/config/pipeline.yaml``.

Checks (every failed one is listed, then the exit code is 1):

1. **CPU twice**, float32, same seed: bit-identical weights (the train step promises repeatable runs on the same
   hardware). Prints training rows/s on CPU.
2. **CUDA twice**, bf16 autocast, same seed: bit-identical weights again. Prints training rows/s on CUDA and the
   GPU's peak memory (``torch.cuda.max_memory_allocated``).
3. **bf16 inference**: the CPU-trained weights predict the holdout on CUDA under bf16 autocast and on CPU in
   float32: largest probability difference <= ``INFERENCE_MAX_ABS`` (0.01).
4. **CUDA-trained against CPU-trained**, both predicting the holdout on CPU (as the model package serves):
   holdout ROC AUC difference <= ``evaluation.max_degradation`` (0.01) and mean absolute probability
   difference <= ``TRAINED_MEAN_ABS`` (0.03). The largest difference is printed, not judged.
5. **DDP**, with two or more GPUs: one process per GPU (``torch.multiprocessing``, nccl) through
   ``mlsteps.distributed.World`` as under torchrun; rows/s, peak memory, and check 4 against the CPU model.

``--rehearse`` runs checks 2 to 5 on the CPU where there is no GPU (float32, DDP with two gloo processes): it tests
this script's code paths, not a GPU; the test suite runs it so.

The tolerances, and why. Two trainings on different devices cannot give the same weights: bf16 keeps 8 significant
bits (a relative rounding error up to 2^-8, about 0.4%, on every matmul input), and dropout draws its masks from the
CUDA generator (Philox) instead of the CPU's (Mersenne Twister), so after the first step the two runs follow
different trajectories, like two runs with different dropout seeds; early stopping may then keep another epoch. So
the trained models are judged by what the pipeline judges a model by. The ROC AUC tolerance is the promotion gate's
own: a CUDA-trained challenger may lose no more against a CPU-trained champion than the gate allows. On 100,000 rows
and 5 epochs, eight CPU simulations of "bf16 autocast plus another dropout stream" against the float32 model moved
the holdout ROC AUC by at most 0.0005 and the mean absolute probability by 0.006 to 0.007, or by 0.013 in the three
where early stopping kept another epoch (their largest single difference was then 0.38, which is why the largest is
not judged); 0.03 is over twice that. The same weights under bf16 inference (on CPU) differed by at most 0.003 in
probability: 0.01 leaves room for the GPU kernels' other summation order, while a broken autocast path (float16
overflow, a wrong dtype) lands far outside.

Without a CUDA device it says so, still runs check 1 (which imports everything a GPU run imports) and exits 0.
Figures go to ``benchmarks/results/gpu_check-<time>.json`` (or ``$BENCH_RESULTS_DIR``).

It runs where only Python with torch, numpy, pandas and scikit-learn is installed: it imports no MLflow, typer,
pydantic, PyYAML or tqdm (``config_section`` reads the three flat sections it needs from pipeline.yaml; a unit test
checks that it reads what ``mlsteps.config`` loads, and the smoke test hides those packages while it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from record import write_report

if TYPE_CHECKING:
    import torch

    from mlsteps.data.features import TabularPreprocessor
    from mlsteps.distributed import World

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_CONFIG = PROJECT_ROOT / "include" / "config" / "pipeline.yaml"
# The generated dataset's columns that are not features (mlsteps.data.datasets.generate_churn).
ID_COLUMN, TIME_COLUMN, TARGET_COLUMN = "customer_id", "event_time", "churned"
DATA_SEED = 7
INFERENCE_MAX_ABS = 0.01
TRAINED_MEAN_ABS = 0.03


# ---------------------------------------------------------------------------------------------------- settings
def _value(text: str) -> Any:
    """A YAML scalar or flow list as this config writes them: numbers, [a, b], true/false, bare words."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"true": True, "false": False}.get(text, text)


def config_section(section: str, path: Path = PIPELINE_CONFIG) -> dict[str, Any]:
    """The ``key: value`` lines of one top-level section of the pipeline config, without PyYAML; nested blocks
    (such as ``training.gbdt``) are left out.

    Raises:
        SystemExit: the section is missing.
    """
    values: dict[str, Any] = {}
    inside = False
    for line in path.read_text().splitlines():
        content = line.split("#", 1)[0].rstrip()
        if not content.strip():
            continue
        if not content.startswith(" "):
            inside = content == f"{section}:"
            continue
        # Two spaces: the section's own keys; deeper lines belong to a nested block.
        if inside and not content.startswith("   "):
            key, _, value = content.strip().partition(":")
            if value.strip():
                values[key] = _value(value.strip())
    if not values:
        raise SystemExit(f"{path} has no {section}: section")
    return values


@dataclass(frozen=True)
class TrainingSettings:
    """The training settings the loop reads (``mlsteps.training.trainer.TrainingSettings``)."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    hidden_units: list[int]
    dropout: float
    max_embedding_dim: int
    patience: int
    seed: int


def training_settings(epochs: int) -> TrainingSettings:
    """pipeline.yaml's training settings, with ``epochs`` instead of the configured budget."""
    values = config_section("training")  # the check chooses the devices; the network's settings only
    names = TrainingSettings.__dataclass_fields__
    return TrainingSettings(**{**{key: value for key, value in values.items() if key in names}, "epochs": epochs})


# ---------------------------------------------------------------------------------------------------- the data
@dataclass
class Data:
    """The fitted preprocessor and each split as (numeric, category indices, labels) CPU tensors."""

    preprocessor: TabularPreprocessor
    splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    def on(self, device: torch.device, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One split on ``device``, as the train step holds it."""
        numeric, categories, labels = self.splits[name]
        return numeric.to(device), categories.to(device), labels.to(device)


def feature_columns(frame: Any) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns of the generated dataset, in its column order."""
    features = [column for column in frame.columns if column not in (ID_COLUMN, TIME_COLUMN, TARGET_COLUMN)]
    numeric = [column for column in features if frame[column].dtype.kind == "f"]
    return numeric, [column for column in features if column not in numeric]


def time_split(frame: Any, validation_fraction: float, holdout_fraction: float) -> dict[str, Any]:
    """The latest rows are the holdout, the validation rows just before them (``split.method: time``)."""
    ordered = frame.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)
    holdout_start = len(ordered) - round(len(ordered) * holdout_fraction)
    validation_start = holdout_start - round(len(ordered) * validation_fraction)
    return {
        "train": ordered.iloc[:validation_start],
        "validation": ordered.iloc[validation_start:holdout_start],
        "holdout": ordered.iloc[holdout_start:],
    }


def make_data(rows: int) -> Data:
    """Generate churn rows, split them by time, fit the preprocessor on train and tensorise every split."""
    import torch

    from mlsteps.data.datasets import generate_churn
    from mlsteps.data.features import TabularPreprocessor
    from mlsteps.evaluation.tasks import encode_target

    split = config_section("split")
    if split["method"] != "time":
        raise SystemExit(f"{PIPELINE_CONFIG}: split.method {split['method']!r}; this check mirrors the time split")
    frames = time_split(generate_churn(rows, seed=DATA_SEED), split["validation_fraction"], split["holdout_fraction"])
    numeric_columns, categorical_columns = feature_columns(frames["train"])
    preprocessor = TabularPreprocessor.fit(frames["train"], numeric_columns, categorical_columns)
    splits = {}
    for name, frame in frames.items():
        numeric, categories = preprocessor.transform(frame)
        labels = encode_target(frame[TARGET_COLUMN], "binary", [0, 1], f"{name} split")
        splits[name] = (torch.from_numpy(numeric), torch.from_numpy(categories), torch.from_numpy(labels).float())
    return Data(preprocessor, splits)


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class Run:
    """One training: its best weights (on CPU) and its figures."""

    device: str
    weights: dict[str, torch.Tensor]
    seconds: float
    rows_per_second: float
    epochs_run: int
    best_epoch: int
    best_val_roc_auc: float
    peak_gpu_memory_mb: float | None = None
    world_size: int = 1

    def figures(self) -> dict[str, Any]:
        """The JSON-able figures, without the weights."""
        return {key: value for key, value in asdict(self).items() if key != "weights"}


def train(data: Data, settings: TrainingSettings, device: torch.device, world: World | None = None) -> Run:
    """Train with the train step's Trainer on ``device`` and keep the best epoch's weights, as the step does."""
    import torch

    from mlsteps.distributed import World
    from mlsteps.training.trainer import Trainer

    world = world or World()
    train_split, validation = data.on(device, "train"), data.on(device, "validation")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(data.preprocessor, settings, device, world)
    started = time.perf_counter()
    trainer.fit(torch.nn.BCEWithLogitsLoss(), train_split, validation)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    progress = trainer.progress
    return Run(
        device=str(device),
        weights={name: tensor.detach().cpu().clone() for name, tensor in trainer.best_weights.items()},
        seconds=round(seconds, 3),
        rows_per_second=round(len(data.splits["train"][2]) * progress.epoch / seconds),
        epochs_run=progress.epoch,
        best_epoch=progress.best_epoch,
        best_val_roc_auc=round(progress.best_val_roc_auc, 5),
        peak_gpu_memory_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        world_size=world.size,
    )


def network(data: Data, settings: TrainingSettings, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network of ``settings`` with ``weights``, on CPU in eval mode."""
    from mlsteps.training.mlp import NetworkSpec, TabularNet

    spec = NetworkSpec(
        numeric_features=len(data.preprocessor.numeric_columns),
        cardinalities=data.preprocessor.cardinalities,
        hidden_units=list(settings.hidden_units),
        dropout=settings.dropout,
        max_embedding_dim=settings.max_embedding_dim,
    )
    net = TabularNet(spec)
    net.load_state_dict(weights)
    return net.eval()


def holdout_probabilities(
    data: Data, net: torch.nn.Module, device: torch.device | None = None, bf16: bool = False
) -> Any:
    """Probabilities of the holdout rows (a numpy array), on ``device`` (default CPU), optionally under autocast."""
    import torch

    from mlsteps.training.mlp import predict_logits

    device = device or torch.device("cpu")
    numeric, categories, _ = data.on(device, "holdout")
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = predict_logits(net.to(device), numeric, categories)
    net.to("cpu")
    return torch.sigmoid(logits.float()).cpu().numpy()


def identical(first: Run, second: Run) -> list[str]:
    """The weights that differ between two runs (empty when bit-identical), with their largest difference."""
    return [
        f"{name} (max |difference| {float((first.weights[name] - second.weights[name]).abs().max()):.3g})"
        for name in first.weights
        if not bool((first.weights[name] == second.weights[name]).all())
    ]


def agreement(data: Data, settings: TrainingSettings, reference: Run, other: Run) -> dict[str, float]:
    """Holdout ROC AUC of both models and their probability differences, both predicting on CPU in float32."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels = data.splits["holdout"][2].numpy()
    ours = holdout_probabilities(data, network(data, settings, reference.weights))
    theirs = holdout_probabilities(data, network(data, settings, other.weights))
    difference = np.abs(ours - theirs)
    auc_reference, auc_other = roc_auc_score(labels, ours), roc_auc_score(labels, theirs)
    return {
        "roc_auc_reference": round(float(auc_reference), 5),
        "roc_auc_other": round(float(auc_other), 5),
        "roc_auc_difference": round(float(abs(auc_other - auc_reference)), 5),
        "mean_abs_probability_difference": round(float(difference.mean()), 5),
        "max_abs_probability_difference": round(float(difference.max()), 5),
    }


# ---------------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, size: int, data: Data, settings: TrainingSettings, device_type: str, out: str) -> None:
    """One rank, placed as torchrun would place it: World from the environment, its own GPU, the process group."""
    import torch

    from mlsteps.distributed import World

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size)})
    world = World.from_env()
    device = world.place(torch.device(device_type))
    with world.process_group(device):
        train(data, settings, device, world)  # warm-up: one-time imports, kernels, the process group's buffers
        run = train(data, settings, device, world)
    if world.is_main:
        torch.save(asdict(run), out)


def train_ddp(data: Data, settings: TrainingSettings, size: int, device_type: str) -> Run:
    """Train data-parallel with ``size`` processes (nccl on CUDA, gloo on CPU); rank 0's second (warm) run."""
    import torch
    import torch.multiprocessing as mp

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "rank0.pt")
        mp.spawn(_ddp_worker, args=(size, data, settings, device_type, out), nprocs=size, join=True)
        return Run(**torch.load(out, weights_only=True))


# ---------------------------------------------------------------------------------------------------- the check
@dataclass
class Check:
    """What was measured and which checks failed."""

    figures: dict[str, Any]
    failures: list[str]

    def judge(self, ok: bool, failure: str) -> str:
        """Record ``failure`` unless ``ok``; returns the verdict word to print."""
        if not ok:
            self.failures.append(failure)
        return "ok" if ok else "FAILED"


def _print_run(label: str, run: Run) -> None:
    memory = f", GPU peak memory {run.peak_gpu_memory_mb:,.0f} MiB" if run.peak_gpu_memory_mb is not None else ""
    print(
        f"  {label:<30}{run.rows_per_second:>10,} rows/s  ({run.seconds:.1f} s, {run.epochs_run} epochs, best "
        f"{run.best_epoch}, val ROC AUC {run.best_val_roc_auc:.4f}){memory}",
        flush=True,
    )


def check_repeatable(check: Check, name: str, first: Run, second: Run) -> None:
    """Check that two trainings with the same seed on the same device gave bit-identical weights."""
    differing = identical(first, second)
    verdict = check.judge(not differing, f"{name}: the same seed gave different weights: {', '.join(differing)}")
    print(f"  {name} twice, same seed: weights {'identical' if not differing else 'DIFFER'}  {verdict}")
    check.figures[f"{name}_repeatable"] = not differing


def check_agreement(
    check: Check, name: str, data: Data, settings: TrainingSettings, cpu: Run, other: Run, auc_tolerance: float
) -> None:
    """Check a model trained elsewhere against the CPU model on the holdout, within the stated tolerances."""
    figures = agreement(data, settings, cpu, other)
    check.figures[f"{name}_vs_cpu"] = figures
    auc_ok = figures["roc_auc_difference"] <= auc_tolerance
    mean_ok = figures["mean_abs_probability_difference"] <= TRAINED_MEAN_ABS
    print(
        f"  {name} vs CPU, holdout ROC AUC {figures['roc_auc_other']:.4f} vs {figures['roc_auc_reference']:.4f}: "
        f"difference {figures['roc_auc_difference']:.4f} <= {auc_tolerance}  "
        + check.judge(auc_ok, f"{name}: ROC AUC differs from CPU's by {figures['roc_auc_difference']}")
    )
    print(
        f"  {name} vs CPU, mean |probability difference| {figures['mean_abs_probability_difference']:.4f} <= "
        f"{TRAINED_MEAN_ABS}  "
        + check.judge(mean_ok, f"{name}: mean |probability difference| {figures['mean_abs_probability_difference']}")
        + f"  (largest {figures['max_abs_probability_difference']:.4f}, not judged)"
    )


def _rows_per_second(*runs: Run) -> int:
    """The faster of repeated identical runs: the first pays one-time imports and kernel warm-up."""
    return max(run.rows_per_second for run in runs)


def check_device(
    check: Check,
    data: Data,
    settings: TrainingSettings,
    cpu: Run,
    cpu_rows_per_second: int,
    auc_tolerance: float,
    device: torch.device,
) -> None:
    """Checks 2 to 5 on ``device``: CUDA, or the CPU in a rehearsal (float32: the Trainer autocasts on CUDA only)."""
    import numpy as np
    import torch

    cuda = device.type == "cuda"
    name = "CUDA" if cuda else "rehearsal"
    if cuda:
        gpu = {"name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
        check.figures["gpu"] = gpu
        print(f"\nCUDA: {gpu['count']} x {gpu['name']}", flush=True)
    else:
        print("\nrehearsal: the CUDA checks' code on the CPU (it tests this script, not a GPU)", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = train(data, settings, device), train(data, settings, device)
    nondeterministic = sorted({str(w.message).split("\n")[0] for w in caught if "determinis" in str(w.message)})
    for message in nondeterministic:
        print(f"  torch warns: {message}")
    _print_run(f"{name} {'bf16' if cuda else 'float32'}, run 1", first)
    _print_run(f"{name} {'bf16' if cuda else 'float32'}, run 2", second)
    check.figures[name] = {
        "runs": [first.figures(), second.figures()],
        "rows_per_second": _rows_per_second(first, second),
        "peak_gpu_memory_mb": max(first.peak_gpu_memory_mb or 0, second.peak_gpu_memory_mb or 0) if cuda else None,
        "determinism_warnings": nondeterministic,
    }
    check_repeatable(check, name, first, second)

    cpu_net = network(data, settings, cpu.weights)
    bf16 = holdout_probabilities(data, cpu_net, device, bf16=True)
    fp32 = holdout_probabilities(data, cpu_net)
    largest = float(np.abs(bf16 - fp32).max())
    check.figures[f"{name}_bf16_inference_max_abs_probability_difference"] = round(largest, 6)
    print(
        f"  same weights, bf16 on {device.type} vs float32 on CPU: largest |probability difference| {largest:.4f} "
        f"<= {INFERENCE_MAX_ABS}  "
        + check.judge(largest <= INFERENCE_MAX_ABS, f"{name}: bf16 inference differs by {largest}")
    )
    check_agreement(check, name, data, settings, cpu, second, auc_tolerance)
    print(f"  {name} trains {_rows_per_second(first, second) / cpu_rows_per_second:.1f}x the CPU's rows/s")

    processes = torch.cuda.device_count() if cuda else 2
    if processes >= 2:
        run_ddp(check, data, settings, cpu, processes, device.type, auc_tolerance)


def run_ddp(
    check: Check, data: Data, settings: TrainingSettings, cpu: Run, size: int, device_type: str, auc_tolerance: float
) -> None:
    """Check 5: DDP over ``size`` processes on ``device_type``."""
    name = f"DDP {size} x {device_type}"
    print(f"\n{name} ({'nccl' if device_type == 'cuda' else 'gloo'}):", flush=True)
    run = train_ddp(data, settings, size, device_type)
    _print_run(name, run)
    check.figures["ddp"] = {"device": device_type, **run.figures()}
    check_agreement(check, name, data, settings, cpu, run, auc_tolerance)


def main() -> None:
    """Run the checks, print them, write the JSON result; exit 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of generated churn data")
    parser.add_argument("--epochs", type=int, default=5, help="epoch budget of each training (early stopping applies)")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="without a GPU, run checks 2-5 on the CPU (DDP with 2 gloo processes): tests this script's code paths",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT_ROOT / "include"))
    import torch

    settings = training_settings(args.epochs)
    auc_tolerance = config_section("evaluation")["max_degradation"]
    started = time.perf_counter()
    data = make_data(args.rows)
    rows = {name: len(split[2]) for name, split in data.splits.items()}
    print(f"{args.rows:,} churn rows split {rows}; {settings}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    check = Check({"rows": rows}, [])

    print("\ntraining rows/s (the faster of two runs counts: the first pays one-time imports and warm-up)", flush=True)
    cpu = train(data, settings, torch.device("cpu")), train(data, settings, torch.device("cpu"))
    _print_run("CPU float32, run 1", cpu[0])
    _print_run("CPU float32, run 2", cpu[1])
    check.figures["cpu"] = {"runs": [run.figures() for run in cpu], "rows_per_second": _rows_per_second(*cpu)}
    check_repeatable(check, "CPU", *cpu)

    cuda = torch.cuda.is_available()
    if not cuda:
        print("\nno CUDA device present (torch.cuda.is_available() is False): the CUDA checks did not run")
    if cuda or args.rehearse:
        device = torch.device("cuda" if cuda else "cpu")
        check_device(check, data, settings, cpu[1], _rows_per_second(*cpu), auc_tolerance, device)

    print(f"\ngpu check: {time.perf_counter() - started:.0f} s, {len(check.failures)} failed check(s)")
    write_report(
        "gpu_check",
        {
            "rows": args.rows,
            "epochs": args.epochs,
            "training": asdict(settings),
            "tolerances": {
                "roc_auc_difference": auc_tolerance,
                "trained_mean_abs_probability_difference": TRAINED_MEAN_ABS,
                "bf16_inference_max_abs_probability_difference": INFERENCE_MAX_ABS,
            },
            "torch": torch.__version__,
            "cuda": cuda,
            "rehearsal": args.rehearse and not cuda,
        },
        {**check.figures, "failures": check.failures},
    )
    if check.failures:
        raise SystemExit("gpu check failed:\n- " + "\n- ".join(check.failures))


if __name__ == "__main__":
    main()
