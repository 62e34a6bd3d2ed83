"""Many small torch batches on a pool of single-threaded workers.

Torch splits every op across its threads; on the verifier's and the search's small tensors each op
then ends in a barrier, and when another process holds one of the cores every op waits for it: the
verifier ran 16x slower with 2 threads than with 1 on 2 cores shared with a training job
(bench/README.md). Whole batches in parallel, one thread each, never wait for one another; each
batch writes its own slice of the results, so the output does not depend on the scheduling.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded_ops():
    """Torch ops on one thread inside; yields the thread count there was before (the pool size)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def map_batches(work, batches, label: str, progress=None) -> list:
    """[work(b) for b in batches], run on torch.get_num_threads() single-threaded workers, in order."""
    batches = list(batches)
    with single_threaded_ops() as workers, ThreadPoolExecutor(max(1, workers)) as pool:  # no tensor here needs grad
        results = pool.map(work, batches)
        return list(results if progress is None else progress(results, len(batches), label))
