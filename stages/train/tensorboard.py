"""Optional TensorBoard event files, one folder per fold (train/fold<k>/tensorboard/): the numbers of
metrics.csv as scalars, for those who watch runs in TensorBoard (ASC rounds ask for these logs).

The writer is torch.utils.tensorboard's, which needs the `tensorboard` package; it is optional, so
train.tensorboard: true without it stops before any work with the command that installs it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.errors import CheckError

# metrics.csv column -> scalar tag (grouped as TensorBoard shows them: loss/, val/, lr, speed/)
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr", "images_per_s": "speed/images_per_s", "pool": "curriculum/pool"}


def check(enabled: bool) -> None:
    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise CheckError("train.tensorboard = true needs the tensorboard package: `pip install tensorboard` "
                         "(or set train.tensorboard: false)")


class Scalars:
    """Called with each epoch's metrics.csv row; writes it at step = epoch (1-based)."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def __call__(self, row: dict) -> None:
        step = int(row["epoch"]) + 1
        for key, value in row.items():
            tag = TAGS.get(key) or (f"val/{key[4:]}" if key.startswith("val_") and key != "val_loss" else None)
            if tag is not None and isinstance(value, (int, float)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()  # a killed fold keeps the epochs it logged

    def close(self) -> None:
        self.writer.close()
