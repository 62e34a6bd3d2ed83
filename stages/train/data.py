"""Training data: the cache rows of one fold, the per-epoch sample order (the one place sampling is
decided: class balance, curriculum pool; the DDP shard is cut from it), and the loaders."""

from __future__ import annotations

import copy
import os

import albumentations as A
import numpy as np
import torch


class CacheDataset(torch.utils.data.Dataset):
    """Rows of a uint8 cache (memory-mapped), augmented with albumentations, as CHW uint8 tensors."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, targets: np.ndarray, transform=None):
        self.array, self.rows, self.targets, self.transform = array, rows, targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = np.array(self.array[self.rows[i]])  # a writable copy of the memory-mapped row
        if self.transform is not None:
            image = self.transform(image=image)["image"]
            image = image[..., None] if image.ndim == 2 else image
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), int(self.targets[i]), i


def erasing_probability(transform, gpu_recipe: dict | None) -> float:
    """augment.erasing as the augment stage wrote it: the device recipe's, or the albumentations
    pipeline's CoarseDropout (the only occlusion op augment builds)."""
    if gpu_recipe is not None:
        return float(gpu_recipe.get("erasing", 0.0))
    found = [t.p for t in getattr(transform, "transforms", []) if isinstance(t, A.CoarseDropout)]
    return float(found[0]) if found else 0.0


def without_erasing(transform, gpu_recipe: dict | None):
    """Both augmentation engines' recipes with random erasing off (a short run: stages.train.recipe)."""
    transform = copy.deepcopy(transform)
    for t in getattr(transform, "transforms", []):
        if isinstance(t, A.CoarseDropout):
            t.p = 0.0
    return transform, (None if gpu_recipe is None else {**gpu_recipe, "erasing": 0.0})


def sampling_weights(targets: np.ndarray, kind: str) -> np.ndarray | None:
    """Per-sample draw probabilities for class-balanced sampling; None: a plain permutation."""
    if kind == "uniform":
        return None
    counts = np.bincount(targets).astype(float)
    per_class = 1.0 / counts if kind == "balanced" else 1.0 / np.sqrt(counts)
    w = per_class[targets]
    return w / w.sum()


def epoch_order(n: int, epoch: int, seed: int, probs: np.ndarray | None, pool: np.ndarray | None = None) -> np.ndarray:
    """n sample indices for one epoch, a pure function of (seed, epoch): resume needs no sampler state.
    `pool` restricts the draw (curriculum; repeated to n so an epoch keeps its length); `probs` draws
    with replacement by class balance. Under torchrun every rank draws this same global order and takes
    its share of it (pipeline.distributed.rank_share)."""
    rng = np.random.default_rng([seed, epoch])
    candidates = np.arange(n) if pool is None else np.asarray(pool)
    if probs is not None:
        p = probs[candidates] / probs[candidates].sum()
        return rng.choice(candidates, size=n, replace=True, p=p)
    repeats = -(-n // len(candidates))
    return np.concatenate([rng.permutation(candidates) for _ in range(repeats)])[:n]


def seed_worker(worker_id: int) -> None:
    """Each loader worker seeds its copy of the augmentation from torch's per-worker seed."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**31) if info.dataset.transform is not None else None


class EpochSampler(torch.utils.data.Sampler):
    """Yields the order set for the current epoch, so one DataLoader (and its persistent workers)
    serves every epoch while epoch_order stays the single place that decides what is seen."""

    def __init__(self, n: int):
        self.order = np.arange(n)

    def set_order(self, order: np.ndarray) -> None:
        self.order = np.asarray(order)

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


MAX_AUTO_WORKERS = 8  # beyond this, more loader processes rarely feed a GPU faster on cached uint8 images


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this job may use (SLURM/cgroups), not the machine's count
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def data_workers(workers: int | str) -> int:
    """train.workers, with auto = the cores this process may use minus one for the training loop, at most
    8; under torchrun the cores are shared by the processes of a node. An explicit number is kept."""
    if workers != "auto":
        return int(workers)
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, per_process - 1))


def loader(dataset, sampler: EpochSampler, batch_size: int, workers: int, pin: bool, drop_last: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
        pin_memory=pin, persistent_workers=workers > 0, worker_init_fn=seed_worker if workers else None,
        generator=generator,
    )


class LoaderBatches:
    """The albumentations path with the interface of gpu_augment.DeviceBatches: batches of normalised
    device images with their row positions as a device tensor. The positions are slices of the epoch's
    order, copied to the device once per epoch (the loader's own index tensor would be one more copy per
    step); the images come pinned when on CUDA, so their copy is asynchronous."""

    def __init__(self, dataset: CacheDataset, batch_size: int, workers: int, drop_last: bool, seed: int, norm: dict,
                 device: torch.device, val_array=None, val_rows: np.ndarray | None = None):
        from pipeline.device import to_input

        self.to_input, self.norm, self.device, self.batch_size = to_input, norm, device, batch_size
        self.dataset, self.sampler = dataset, EpochSampler(len(dataset))
        self.loader = loader(dataset, self.sampler, batch_size, workers, device.type == "cuda", drop_last, seed)
        self.val_array, self.val_rows = val_array, val_rows

    def epoch(self, order: np.ndarray, seed: int):
        if self.dataset.transform is not None:
            self.dataset.transform.set_random_seed(seed)
        self.sampler.set_order(order)
        order_t = torch.as_tensor(np.asarray(order)).to(self.device)
        for k, (images, _, _) in enumerate(self.loader):
            yield self.to_input(images, self.norm, self.device), order_t[k * self.batch_size : k * self.batch_size + len(images)]

    def validation(self, batch_size: int, start: int, stop: int):
        """Normalised validation images start..stop (positions among the validation rows), read from the cache."""
        for first in range(start, stop, batch_size):
            images = torch.from_numpy(self.val_array[self.val_rows[first : min(first + batch_size, stop)]]).permute(0, 3, 1, 2)
            if self.device.type == "cuda":
                images = images.pin_memory()
            yield self.to_input(images, self.norm, self.device)
