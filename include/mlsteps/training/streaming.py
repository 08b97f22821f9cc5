"""Training data on disk: the splits encoded batch by batch into memory-mapped ``.npy`` arrays, read back in blocks.

Memory then follows ``processing.batch_rows``, not the size of the data. The raw Parquet splits are read at most
``batch_rows`` rows at a time (``mlsteps.data.batches.iter_frames``), encoded with the fitted preprocessor and
appended to three ``.npy`` files in the step's work folder: numeric (float32), categories (int64) and target. The
``TrainingData`` a trainer receives holds read-only memory maps of those files, so every trainer, built-in or your
own, sees the same array API as before; one that needs its data in memory (``TrainingData.features``, scikit-learn)
still gets it there, and one that reads slices reads only those.

The built-in families read rows with ``read_rows``, which takes a memory-mapped file's rows with ordinary file reads
instead of touching the mapping: the operating system's page cache holds them, not the process, so a pass over the
data does not grow the process's resident memory. Writing goes the same way.

``BlockShuffle`` is the seeded order of an epoch's rows that the mlp family streams: contiguous blocks of rows in a
random order (sequential reads), then the rows of a window of blocks shuffled together (mixing within a batch). It is
a pure function of the seed, the epoch and the row count, so every rank of a distributed run and a resumed run
compute the same order without sharing or saving any random state.
"""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsteps.training.api import TrainingData

if TYPE_CHECKING:
    from mlsteps.config import DatasetConfig
    from mlsteps.data.features import TabularPreprocessor

# Blocks per shuffle window: a window (about batch_rows rows) mixes rows from this many places of the split.
WINDOW_BLOCKS = 16
# Rows per window and per read when nothing says otherwise (processing.batch_rows' default).
DEFAULT_BATCH_ROWS = 100_000
ENCODED_ARRAYS = ("numeric", "categories", "target")


def is_file_backed(array: Any) -> bool:
    """Whether ``array`` is a whole C-ordered memory-mapped file (``np.load(mmap_mode=...)``, ``open_memmap``), whose
    rows ``read_rows`` reads from the file; a slice of one is read like any array."""
    return (
        isinstance(array, np.memmap)
        and isinstance(array.base, mmap.mmap)
        and array.filename is not None
        and array.flags.c_contiguous
    )


def read_rows(array: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an array (numpy, memory-mapped or torch), as an array of the same kind.

    A memory-mapped file's rows come from a file read (a copy in this process, the page cache in the kernel's), so
    reading a large file block by block leaves the process's resident memory at one block.
    """
    stop = min(stop, len(array))
    if not is_file_backed(array) or stop <= start:
        return array[start:stop]
    row_items = math.prod(array.shape[1:])
    return np.fromfile(
        array.filename,
        dtype=array.dtype,
        count=(stop - start) * row_items,
        offset=array.offset + start * row_items * array.dtype.itemsize,
    ).reshape((stop - start, *array.shape[1:]))


def encode_split(
    uri: str,
    preprocessor: TabularPreprocessor,
    dataset: DatasetConfig,
    what: str,
    folder: Path,
    batch_rows: int,
) -> TrainingData:
    """One Parquet split as the families see it, encoded ``batch_rows`` rows at a time into ``.npy`` files in
    ``folder``; the same arrays as ``mlsteps.steps.train.training_data`` gives for the whole table, memory-mapped.

    Raises:
        DataError: a feature column is missing, a numeric one holds text, or the target has values the task does
            not allow (as ``TabularPreprocessor.transform`` and ``encode_target`` say).
        RuntimeError: the file had another number of rows than its footer says (changed while being read).
    """
    from mlsteps.data import batches
    from mlsteps.data.features import require_columns
    from mlsteps.evaluation.tasks import TargetEncoding, is_classification

    target = dataset.target
    rows = batches.parquet_rows(uri)
    layouts = {
        "numeric": ((rows, len(preprocessor.numeric_columns)), np.float32),
        "categories": ((rows, len(preprocessor.categorical_columns)), np.int64),
        "target": ((rows,), np.int64 if is_classification(target.task) else np.float64),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.npy" for name in ENCODED_ARRAYS}
    offsets = {}
    for name, (shape, dtype) in layouts.items():
        created = np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype, shape=shape)
        offsets[name] = created.offset
        del created  # only the header and the file's size: the rows are written with file writes below
    columns = [*preprocessor.numeric_columns, *preprocessor.categorical_columns, target.name]
    target_encoding = TargetEncoding(target.task, target.classes, what)
    written = 0
    with contextlib.ExitStack() as files:
        outputs = {name: files.enter_context(open(paths[name], "r+b")) for name in ENCODED_ARRAYS}
        for frame in batches.iter_frames(uri, batch_rows, columns):
            require_columns(frame, columns, what)
            numeric, categories = preprocessor.transform(frame)
            encoded = {
                "numeric": numeric,
                "categories": categories,
                "target": target_encoding.encode(frame[target.name]),
            }
            for name, values in encoded.items():
                shape, dtype = layouts[name]
                values = np.ascontiguousarray(values, dtype=dtype)
                row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
                outputs[name].seek(offsets[name] + written * row_bytes)
                values.tofile(outputs[name])
            written += len(frame)
    target_encoding.check()  # the bad target values of all batches in one message, as for the whole table
    if written != rows:
        raise RuntimeError(f"{what}: read {written} rows but its footer says {rows}; was it replaced while read?")
    numeric, categories, target_values = (np.load(paths[name], mmap_mode="r") for name in ENCODED_ARRAYS)
    return TrainingData(numeric, categories, target_values)


@dataclass(frozen=True)
class BlockShuffle:
    """The order of one epoch's rows: blocks of ``block_rows`` contiguous rows in a seeded random order, grouped into
    windows of ``window_blocks`` blocks whose rows are shuffled together.

    A window is what is read and held at a time (``block_rows * window_blocks`` rows); a split that fits in one window
    is shuffled uniformly, as a full permutation would. Row ``i`` of a larger split lands anywhere within its window,
    and its window draws on ``window_blocks`` places of the file, so a batch mixes rows from all over the split
    (a file sorted by time does not give batches of one period).
    """

    rows: int
    block_rows: int
    seed: int
    window_blocks: int = WINDOW_BLOCKS

    @classmethod
    def for_memory(cls, rows: int, batch_rows: int, seed: int) -> BlockShuffle:
        """The order whose windows hold about ``batch_rows`` rows (``processing.batch_rows``)."""
        return cls(rows=rows, block_rows=max(1, math.ceil(batch_rows / WINDOW_BLOCKS)), seed=seed)

    def windows(self, epoch: int) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """The epoch's windows in order: each as its blocks' row ranges ``(start, stop)`` and the order in which
        to take the rows of those blocks, laid end to end (positions into them)."""
        blocks = math.ceil(self.rows / self.block_rows)
        block_order = np.random.default_rng([self.seed, epoch]).permutation(blocks)
        for window, first in enumerate(range(0, blocks, self.window_blocks)):
            ranges = [
                (int(block) * self.block_rows, min(self.rows, (int(block) + 1) * self.block_rows))
                for block in block_order[first : first + self.window_blocks]
            ]
            size = sum(stop - start for start, stop in ranges)
            yield ranges, np.random.default_rng([self.seed, epoch, window]).permutation(size)

    def order(self, epoch: int) -> np.ndarray:
        """Every row index of the epoch in the order training visits them (for checks; training goes by window)."""
        parts = [
            np.concatenate([np.arange(start, stop) for start, stop in ranges])[positions]
            for ranges, positions in self.windows(epoch)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rank_part(rows: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part ``(start, stop)`` of a global batch of ``rows`` rows; the parts of all ranks
    differ in length by one row at most and together cover the batch."""
    return rows * rank // size, rows * (rank + 1) // size
