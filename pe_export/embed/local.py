"""The local engine: decoding and preprocessing in a pool of threads, running ahead of the model.

PIL decodes and resizes without holding the GIL, so threads keep the runner fed without the cost of
shipping pixels between processes; the window ahead is bounded, so memory stays a few batches.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np

from pe_export.embed.job import Rows, Run, Shard, embed_shard, pixels_of
from pe_export.embed.output import ShardResult
from pe_export.embed.sources import ImageFailed, Item


def local_results(shards: list[Shard], run: Run, size: int, batch: int, rows: Rows, static: bool,
                  workers: int | None = None) -> Iterator[ShardResult]:
    """Each shard's result in turn, its images decoded while the model runs the ones before."""
    items = [item for shard in shards for item in shard.items]
    with ThreadPoolExecutor(workers or os.cpu_count() or 2, thread_name_prefix="pe-export-decode") as pool:
        try:
            pixels = _decoded(items, size, pool, ahead=4 * batch)
            for shard in shards:
                yield embed_shard(shard, islice(pixels, len(shard.items)), run, batch, rows, static)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _decoded(items: list[Item], size: int, pool: ThreadPoolExecutor, ahead: int) -> Iterator[np.ndarray | ImageFailed]:
    """The items' pixels in order, with up to `ahead` of them being decoded at any time."""
    upcoming = iter(items)
    window = deque(pool.submit(pixels_of, item, size) for item in islice(upcoming, ahead))
    while window:
        done = window.popleft().result()
        following = next(upcoming, None)
        if following is not None:
            window.append(pool.submit(pixels_of, following, size))
        yield done
