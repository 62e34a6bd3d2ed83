import pandas as pd
import pytest

from pipeline.data import DataError, discover, natural_key


def test_kaggle_layout_with_string_labels_and_ids_without_extension(kaggle_dir):
    data = discover(kaggle_dir)
    assert data.layout == "kaggle"
    assert data.classes == ["cat", "dog"]
    train = data.manifest[data.manifest.split == "train"]
    assert len(train) == 24 and train.path.str.endswith(".png").all()
    test = data.manifest[data.manifest.split == "test"]
    assert test.id.tolist() == data.sample["image_id"].tolist()  # the sample's order


def test_ids_with_extension_are_matched_too(kaggle_dir):
    table = pd.read_csv(kaggle_dir / "train.csv")
    table["image_id"] = table.image_id + ".png"
    table.to_csv(kaggle_dir / "train.csv", index=False)
    assert len(discover(kaggle_dir).manifest) == 30


def test_csv_without_expected_columns_names_what_it_found(kaggle_dir):
    pd.DataFrame({"foo": ["img000"], "bar": ["cat"], "baz": [1]}).to_csv(kaggle_dir / "train.csv", index=False)
    with pytest.raises(DataError, match="found columns: foo, bar, baz"):
        discover(kaggle_dir)


def test_ids_without_files_are_counted_and_listed(kaggle_dir):
    for name in ("img003.png", "img004.png"):
        (kaggle_dir / "train" / name).unlink()
    with pytest.raises(DataError, match=r"2 of 24 ids have no image file .*first: img003, img004"):
        discover(kaggle_dir)


def test_missing_folder_and_missing_train(tmp_path):
    with pytest.raises(DataError, match="competition folder not found"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        discover(tmp_path / "empty")


def test_class_per_folder_layout(folders_dir):
    data = discover(folders_dir)
    assert data.layout == "class-per-folder"
    assert data.classes == ["a", "b", "c"]
    assert list(data.sample.columns) == ["id", "label"] and len(data.sample) == 4


def test_empty_class_folder_is_an_error(folders_dir):
    (folders_dir / "train" / "d").mkdir()
    with pytest.raises(DataError, match="class folder is empty"):
        discover(folders_dir)


def test_numeric_labels_sort_naturally():
    assert sorted(["10", "2", "1"], key=natural_key) == ["1", "2", "10"]
