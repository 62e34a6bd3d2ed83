"""Ordinary mistakes in a data folder or a command line, each one line (exit 2) or correct behaviour:
ids with spaces, ambiguous stems, "1" vs "1.0", empty labels, __MACOSX, no test set, broken links, a
workdir inside the data folder, EXIF orientation, 16-bit depth, group-readable artifacts, a full disk."""

from __future__ import annotations

import errno
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from pipeline import artifacts
from pipeline.cache import read_arrays, read_index
from pipeline.cli import app
from pipeline.data import discover
from pipeline.errors import DataError, StageError
from pipeline.images import read_image
from pipeline.params import load_params
from pipeline.runner import BY_NAME, run_stage, stage_status, statuses
from stages.predict.correction import correct
from tests.conftest import ROOT, make_folders, make_kaggle

runner = CliRunner()


def params_for(root: Path, workdir: Path, *extra: str):
    sets = [f"data.root={root}", "preprocess.size=16", "preprocess.workers=1", *extra]
    return load_params(ROOT / "params.yaml", sets, workdir=str(workdir))[0]


def test_ids_with_spaces_are_matched_and_reported(kaggle_dir):
    sample = pd.read_csv(kaggle_dir / "sample_submission.csv", dtype=str)
    sample.loc[0, "image_id"] = sample.image_id[0] + " "
    sample.to_csv(kaggle_dir / "sample_submission.csv", index=False)
    data = discover(kaggle_dir)
    assert data.sample.image_id[0] == "t000"  # no class prior for an id that only had a space
    assert "t000" in set(data.manifest.id[data.manifest.split == "test"])
    assert any("1 sample_submission.csv ids had spaces" in n for n in data.notes)


def test_two_files_with_one_stem_are_an_error_listing_them(kaggle_dir):
    cv2.imwrite(str(kaggle_dir / "train" / "img003.jpg"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"1 ids match more than one file .*img003: img003.jpg, img003.png"):
        discover(kaggle_dir)
    cv2.imwrite(str(kaggle_dir / "test" / "t001.jpg"), np.zeros((8, 8), np.uint8))
    (kaggle_dir / "sample_submission.csv").unlink()
    (kaggle_dir / "train" / "img003.jpg").unlink()
    with pytest.raises(DataError, match=r"test ids would name more than one file \(t001.jpg, t001.png\)"):
        discover(kaggle_dir)


def test_numeric_labels_in_two_spellings_are_one_class_and_empty_labels_are_counted(kaggle_dir):
    table = pd.read_csv(kaggle_dir / "train.csv", dtype=str)
    table["class"] = ["1", "1.0", "2", ""] * (len(table) // 4)
    table.to_csv(kaggle_dir / "train.csv", index=False)
    data = discover(kaggle_dir)
    assert data.classes == ["1", "2"]
    assert any("numeric labels normalised" in n and "1.0 -> 1" in n for n in data.notes)
    assert any("6 rows of train.csv with an empty 'class' dropped" in n for n in data.notes)


def test_labels_all_spelled_one_way_are_kept_as_written(kaggle_dir):
    table = pd.read_csv(kaggle_dir / "train.csv", dtype=str)
    table["class"] = ["1.0", "2.0"] * (len(table) // 2)
    table.to_csv(kaggle_dir / "train.csv", index=False)
    data = discover(kaggle_dir)
    assert data.classes == ["1.0", "2.0"] and not data.notes


def test_macosx_and_hidden_folders_are_never_classes_or_images(folders_dir):
    for junk in ("__MACOSX", ".ipynb_checkpoints"):
        (folders_dir / "train" / junk).mkdir()
        cv2.imwrite(str(folders_dir / "train" / junk / "._0.png"), np.zeros((8, 8), np.uint8))
        (folders_dir / "train" / "a" / junk).mkdir()
        cv2.imwrite(str(folders_dir / "train" / "a" / junk / "0.png"), np.zeros((8, 8), np.uint8))
    data = discover(folders_dir)
    assert data.classes == ["a", "b", "c"]
    assert not data.manifest.path.str.contains("MACOSX|ipynb").any()


def test_no_test_folder_and_no_sample_is_one_line(params_file, kaggle_dir, tmp_path):
    (kaggle_dir / "sample_submission.csv").unlink()
    for f in (kaggle_dir / "test").iterdir():
        f.unlink()
    (kaggle_dir / "test").rmdir()
    result = runner.invoke(app, ["run", "-p", str(params_file), "-w", str(tmp_path / "art"), "-S", f"data.root={kaggle_dir}"])
    assert result.exit_code == 2 and "no test images" in result.output and result.output.count("\n") == 1


def test_a_broken_symlink_is_reported_like_an_unreadable_file(kaggle_dir, tmp_path):
    os.symlink(tmp_path / "nowhere.png", kaggle_dir / "train" / "img005.png.tmp")
    (kaggle_dir / "train" / "img005.png").unlink()
    os.rename(kaggle_dir / "train" / "img005.png.tmp", kaggle_dir / "train" / "img005.png")
    os.symlink(tmp_path / "nowhere", kaggle_dir / "stray-link")
    params, wd = params_for(kaggle_dir, tmp_path / "art"), tmp_path / "art"
    assert statuses(params, wd)[0][1] == "missing"  # status fingerprints the folder without a traceback
    run_stage(BY_NAME["preprocess"], params, wd)
    report = json.loads((wd / "preprocess" / "report.json").read_text())
    assert [f["id"] for f in report["failures"]] == ["img005"] and "cannot open" in report["failures"][0]["reason"]
    assert stage_status(BY_NAME["preprocess"], params, wd)[0] == "fresh"


def test_a_workdir_inside_the_data_folder_is_not_data(kaggle_dir):
    wd = kaggle_dir / "artifacts"
    params = params_for(kaggle_dir, wd)
    run_stage(BY_NAME["preprocess"], params, wd)
    assert stage_status(BY_NAME["preprocess"], params, wd) == ("fresh", "params, inputs and outputs unchanged")


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :20] = 255  # a bright corner tells the orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored sideways, shown turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = read_image(tmp_path / "phone.jpg")
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg")))
    assert image.shape == (60, 40, 3) == shown.shape
    assert np.abs(image.astype(int) - shown.astype(int)).mean() < 3


def test_16_bit_images_keep_their_brightness_relative_to_the_dataset(tmp_path):
    root = tmp_path / "comp"
    make_kaggle(root, n_train=8, n_test=2)
    for name, value in (("img000", 200), ("img001", 51200)):
        cv2.imwrite(str(root / "train" / f"{name}.png"), np.full((16, 16), value, np.uint16))
    params, wd = params_for(root, tmp_path / "art", "preprocess.median_ksize=0"), tmp_path / "art"
    run_stage(BY_NAME["preprocess"], params, wd)
    index = read_index(wd / "preprocess")
    cache = read_arrays(wd / "preprocess")["train"]
    row = index.set_index("id")["row"]
    assert cache[row["img000"]].max() == 0 and cache[row["img001"]].max() == 200  # 200 >> 8 and 51200 >> 8
    assert json.loads((wd / "preprocess" / "report.json").read_text())["bit_depth"] == 16


def test_artifacts_are_group_readable_under_the_users_umask(tmp_path):
    path = artifacts.write_json(tmp_path / "x.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~artifacts.UMASK
    if artifacts.UMASK & 0o040 == 0:
        assert path.stat().st_mode & stat.S_IRGRP


def test_a_full_disk_is_one_line_and_keeps_the_last_good_outputs(kaggle_dir, tmp_path, monkeypatch):
    wd = tmp_path / "art"
    params = params_for(kaggle_dir, wd)
    for name in ("preprocess", "dedup"):
        run_stage(BY_NAME[name], params, wd)
    before = {p.name: p.read_bytes() for p in (wd / "dedup").iterdir() if p.is_file()}

    @contextmanager
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield

    monkeypatch.setattr(artifacts, "atomic_path", full)
    with pytest.raises(StageError, match=r"^dedup: disk full writing in .*dedup .*the last good outputs are intact"):
        run_stage(BY_NAME["dedup"], params_for(kaggle_dir, wd, "dedup.threshold=0.5"), wd)
    assert {p.name: p.read_bytes() for p in (wd / "dedup").iterdir() if p.is_file()} == before
    assert stage_status(BY_NAME["dedup"], params, wd)[0] == "fresh"


def test_preprocess_checks_free_space_before_it_starts(kaggle_dir, tmp_path, monkeypatch):
    import shutil

    import stages.preprocess as preprocess

    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(StageError, match=r"preprocess: the cache of 30 images at 16x16x1 needs .* GiB free"):
        run_stage(BY_NAME["preprocess"], params_for(kaggle_dir, tmp_path / "art"), tmp_path / "art")
    assert not (tmp_path / "art" / "preprocess").exists()


def test_one_readable_class_is_one_line(kaggle_dir, params_file, tmp_path):
    table = pd.read_csv(kaggle_dir / "train.csv", dtype=str)
    for image_id in table.image_id[table["class"] == "dog"]:
        (kaggle_dir / "train" / f"{image_id}.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["preprocess", "-p", str(params_file), "-w", str(tmp_path / "art"), "-S", f"data.root={kaggle_dir}"])
    assert result.exit_code == 2 and "only 1 class (cat) has readable training images" in result.output


def test_an_unclosed_bracket_in_an_override_is_one_line(params_file, tmp_path):
    result = runner.invoke(app, ["run", "-p", str(params_file), "-w", str(tmp_path), "-S", "train.epochs=[2"])
    assert result.exit_code == 2 and "-S 'train.epochs=[2': the value is not valid YAML" in result.output


def test_test_ids_equal_to_train_ids_do_not_break_the_duplicate_correction():
    # CIFAR-10 on Kaggle: train and test images are both numbered 1..N.
    clusters = pd.DataFrame({"id": ["1", "2", "1", "2"], "split": ["train", "train", "test", "test"], "cluster": [0, 1, 0, 2]})
    probs, changes = correct(np.array([[0.9, 0.1], [0.2, 0.8]]), ["1", "2"], clusters, pd.Series({"1": "dog", "2": "cat"}),
                             ["cat", "dog"], leak_label=True, consistent=True)
    assert np.allclose(probs[0], [0, 1]) and changes.id.tolist() == ["1"]  # test 1 is a copy of train 1 (a dog)


@pytest.mark.slow
def test_a_cifar_layout_with_shared_ids_runs_to_a_submission(tmp_path):
    """Train and test both numbered 1..N (CIFAR-10 on Kaggle), with a test image that is a copy of a
    train image: the run finishes and the copy takes its train label."""
    from pipeline.runner import run_all
    from tests.conftest import blob_image

    root, rng = tmp_path / "cifar", np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    images = {i: blob_image(rng, i % 2) for i in range(1, 25)}
    for i, image in images.items():
        cv2.imwrite(str(root / "train" / f"{i}.png"), image)
    pd.DataFrame({"id": list(images), "label": ["cat" if i % 2 else "dog" for i in images]}).to_csv(root / "train.csv", index=False)
    for i in range(1, 7):
        cv2.imwrite(str(root / "test" / f"{i}.png"), images[3] if i == 1 else blob_image(rng, i % 2))
    pd.DataFrame({"id": range(1, 7), "label": "cat"}).to_csv(root / "sample_submission.csv", index=False)
    wd = tmp_path / "art"
    # The blobs' class is their square's position, which crop-to-object (auto: small object on an empty
    # canvas) would remove, leaving every image one bright square; crop is not what this test is about.
    params = params_for(root, wd, "preprocess.size=24", "preprocess.crop.enabled=false", "train.model=resnet10t", "train.folds=2", "train.epochs=1",
                        "train.batch_size=8", "train.workers=0", "predict.batch_size=8", "predict.tta=[identity]")
    run_all(params, wd)
    submission = pd.read_csv(wd / "predict" / "submission.csv", dtype=str)
    assert submission.id.tolist() == [str(i) for i in range(1, 7)]
    assert submission.label[0] == "cat"  # test 1 is train 3's picture, a cat
