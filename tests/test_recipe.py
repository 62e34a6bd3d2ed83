"""The effective recipe: EMA, mixup/cutmix and random erasing scaled to the run's length; numbers in params as given."""

from __future__ import annotations

import json

import pytest

from pipeline.params import load_params
from stages.train import recipe
from tests.conftest import ROOT


def train_params(*overrides: str):
    return load_params(ROOT / "params.yaml", ["data.root=/nonexistent", *overrides])[0].train


@pytest.mark.parametrize("epochs, steps, every, expected", [(10, 3, 1, 0.0), (10, 20, 1, 0.9), (10, 8, 4, 0.0), (10, 12, 4, 0.0),
                                                       (40, 12, 4, 0.958333), (30, 100, 4, 0.993333), (100, 10_000, 4, recipe.EMA_MAX)])
def test_auto_ema_averages_a_fixed_share_of_the_steps_and_needs_a_few_updates(epochs, steps, every, expected):
    p = recipe.resolve(train_params("train.ema=auto", f"train.epochs={epochs}", f"train.ema_every={every}"), steps).params
    assert p.ema == pytest.approx(expected, abs=1e-6)


def test_a_number_is_the_ema_decay_whatever_the_length():
    for steps in (1, 10_000):
        assert recipe.resolve(train_params("train.ema=0.999", "train.epochs=5"), steps).params.ema == 0.999
    assert recipe.resolve(train_params("train.ema=0"), 10_000).params.ema == 0.0


def test_mixing_only_on_long_enough_runs():
    short = recipe.resolve(train_params("train.mixup=0.2", "train.cutmix=1.0", "train.epochs=10", "train.regularise_min_epochs=20"), 50)
    assert (short.params.mixup, short.params.cutmix) == (0.0, 0.0) and "off (10 epochs" in short.decided["mixup/cutmix"]
    long = recipe.resolve(train_params("train.mixup=0.2", "train.cutmix=1.0", "train.epochs=20", "train.regularise_min_epochs=20"), 50)
    assert (long.params.mixup, long.params.cutmix) == (0.2, 1.0)
    always = recipe.resolve(train_params("train.mixup=0.2", "train.epochs=2", "train.regularise_min_epochs=0"), 50)
    assert always.params.mixup == 0.2


def test_erasing_only_on_long_enough_runs_and_said():
    short = recipe.resolve(train_params("train.epochs=10", "train.regularise_min_epochs=20"), 50, erasing=0.25)
    assert not short.erasing and "off (10 epochs" in short.decided["erasing"]
    long = recipe.resolve(train_params("train.epochs=20", "train.regularise_min_epochs=20"), 50, erasing=0.25)
    assert long.erasing and long.decided["erasing"].startswith("0.25")
    unused = recipe.resolve(train_params("train.epochs=10"), 50, erasing=0.0)
    assert unused.erasing and "erasing" not in unused.decided  # nothing to turn off, nothing to say


def test_without_erasing_turns_it_off_in_both_engines_and_nothing_else():
    import albumentations as A
    from stages.augment import build, gpu_recipe
    from stages.train.data import erasing_probability, without_erasing

    augment = load_params(ROOT / "params.yaml", ["data.root=/nonexistent", "augment.erasing=0.25"])[0].augment
    transform, device = build(augment, 32, 32), gpu_recipe(augment)
    assert erasing_probability(transform, None) == erasing_probability(transform, device) == 0.25
    off, device_off = without_erasing(transform, device)
    assert erasing_probability(off, None) == erasing_probability(off, device_off) == 0.0
    assert device_off == {**device, "erasing": 0.0}
    assert [type(t) for t in off.transforms] == [type(t) for t in transform.transforms]
    assert [t.p for t in off.transforms if not isinstance(t, A.CoarseDropout)] == [t.p for t in transform.transforms if not isinstance(t, A.CoarseDropout)]
    assert erasing_probability(transform, None) == 0.25  # the shared pipeline is left as it was


def test_other_knobs_untouched_and_the_decision_recorded(tmp_path):
    p = train_params("train.epochs=12")
    scaled = recipe.apply(p, 25, 0, tmp_path).params
    assert scaled.model_dump(exclude={"ema", "mixup", "cutmix"}) == p.model_dump(exclude={"ema", "mixup", "cutmix"})
    record = json.loads((tmp_path / recipe.RECORD).read_text())
    assert record["total_steps"] == 300 and record["ema"].startswith(str(scaled.ema)) and "auto" in record["ema"]
    recipe.apply(p, 25, 0, None)  # a rank that does not write: nothing more on disk
    assert [f.name for f in tmp_path.iterdir()] == [recipe.RECORD]


def test_min_steps_raises_the_epochs_and_every_knob_sees_the_longer_run():
    p = train_params("train.epochs=15", "train.min_steps=500", "train.ema=auto", "train.ema_every=4",
                     "train.mixup=0.2", "train.regularise_min_epochs=20")
    short = recipe.resolve(p, 4)  # 15 epochs x 4 steps = 60 steps: raised to 125 epochs (500 steps)
    assert short.params.epochs == 125 and "train.min_steps 500: 15 epochs are 60 steps" in short.decided["epochs"]
    assert short.params.ema == pytest.approx(1 - 1 / (0.05 * 500)) and short.params.mixup == 0.2  # 125 epochs: a long run
    long = recipe.resolve(p, 40)  # 600 steps already: as set, nothing said
    assert long.params.epochs == 15 and "epochs" not in long.decided
    assert recipe.resolve(train_params("train.epochs=3", "train.min_steps=0"), 1).params.epochs == 3
