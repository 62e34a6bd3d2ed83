"""Train's views and switches: the worst OOF predictions, TensorBoard scalars, loader workers auto."""

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import CheckError
from stages.train import data as train_data
from stages.train import plots, tensorboard
from stages.train.top_losses import worst


def test_worst_ranks_by_true_class_loss_and_counts_cluster_copies(tmp_path):
    oof = pd.DataFrame({"id": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"],
                        "p_x": [0.9, 0.8, 0.4, 0.3], "p_y": [0.1, 0.2, 0.6, 0.7]})
    clusters = pd.DataFrame({"id": ["a", "b", "c", "d", "t1"], "cluster": [0, 1, 1, 2, 1]})
    table = worst(oof, ["x", "y"], clusters, count=3)
    assert table.id.tolist() == ["b", "c", "d"]  # b: true y at 0.2, c: true x at 0.4, d: true y at 0.7
    assert table.predicted.tolist() == ["x", "y", "y"] and table.probability.tolist() == pytest.approx([0.8, 0.6, 0.7])
    assert table.copies.tolist() == [2, 2, 0]  # b and c share a cluster with each other and a test image
    assert table.loss.tolist() == pytest.approx(-np.log([0.2, 0.4, 0.7]))
    images = [np.full((8, 8, 1), 100 * k, np.uint8) for k in range(3)]
    plots.top_losses(table, images, tmp_path / "top_losses.png")
    assert (tmp_path / "top_losses.png").stat().st_size > 1000


def test_curves_and_confusion_draw(tmp_path):
    history = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.5, 0.4], "val_loss": [0.9, 0.6, 0.7],
                            "val_accuracy": [0.5, 0.8, 0.7]})
    assert plots.best_epoch(history, "accuracy") == 1 and plots.best_epoch(history.rename(columns={"val_loss": "val_log_loss"}), "log_loss") == 1
    plots.curves(history, "accuracy", tmp_path / "curves.png")
    plots.confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b"], tmp_path / "confusion.png")
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "confusion.png").is_file()


def test_tensorboard_missing_is_one_line_before_any_work(monkeypatch):
    monkeypatch.setattr(tensorboard.importlib.util, "find_spec", lambda name: None)
    tensorboard.check(False)  # off: nothing needed
    with pytest.raises(CheckError, match=r"train.tensorboard = true needs the tensorboard package: `pip install tensorboard`"):
        tensorboard.check(True)


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = tensorboard.Scalars(tmp_path)
    scalars({"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.5, "lr": 0.1, "frozen": "none"})
    scalars({"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8, "lr": 0.05, "frozen": "none"})
    scalars.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"loss/train", "loss/val", "val/accuracy", "lr"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("val/accuracy")] == [(1, 0.5), (2, 0.8)]


@pytest.mark.parametrize("cores, processes, expected", [(2, 1, 1), (1, 1, 0), (32, 1, 8), (16, 4, 3), (4, 8, 0)])
def test_workers_auto_leaves_a_core_for_the_loop_and_shares_a_node(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(train_data, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert train_data.data_workers("auto") == expected
    assert train_data.data_workers(5) == 5  # an explicit number is kept
