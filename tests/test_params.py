from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.params import EXAMPLE_ROOT, ParamsError, load_params, parse_override

runner = CliRunner()


def test_shipped_params_load_and_keep_the_keys_others_rely_on(params_file):
    params, _ = load_params(params_file, ["data.root=/some/competition"])
    for key in ("model", "folds", "epochs", "batch_size", "lr", "device"):
        assert hasattr(params.train, key)
    assert params.preprocess.size and params.dedup.threshold is not None and params.seed >= 0
    assert params.workdir == "artifacts"


def test_example_overrides_apply_only_to_the_example_and_user_wins(params_file):
    example, applied = load_params(params_file)
    assert example.data.root == EXAMPLE_ROOT and applied
    raw = yaml.safe_load(params_file.read_text())
    assert example.train.epochs == raw["example"]["train.epochs"]
    real, applied_real = load_params(params_file, ["data.root=/data/comp"])
    assert applied_real == [] and real.train.epochs == raw["train"]["epochs"]
    mine, applied_mine = load_params(params_file, ["train.epochs=2"])
    assert mine.train.epochs == 2 and not any(a.startswith("train.epochs=") for a in applied_mine)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.folds=1", "train.folds = 1"),
        ("train.lr=-0.1", "train.lr = -0.1"),
        ("train.epochs=many", "train.epochs = 'many'"),
        ("train.device=tpu", "train.device = 'tpu'"),
        ("train.bogus=3", "train.bogus: unknown key"),
        ("nosuch.key=3", "nosuch.key: unknown key"),
    ],
)
def test_bad_params_fail_with_one_line_naming_the_key(params_file, override, message):
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_params(params_file, [override])
    result = runner.invoke(app, ["status", "--params", str(params_file), "-S", override])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) <= 2


def test_missing_key_is_an_error_not_a_silent_default(params_file):
    raw = yaml.safe_load(params_file.read_text())
    del raw["train"]["weight_decay"]
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="train.weight_decay: missing"):
        load_params(params_file)


def test_override_values_are_read_as_yaml():
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("predict.tta=[identity, hflip]") == ("predict.tta", ["identity", "hflip"])
    assert parse_override("train.pretrained=null") == ("train.pretrained", None)
    with pytest.raises(ParamsError, match="expected key.path=value"):
        parse_override("train.epochs")


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_yaml_error_names_line_and_column(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  root: x\ntrain:\n  epochs: 3\n   lr: 2\n")
    with pytest.raises(ParamsError, match=r"params.yaml:5:6: not valid YAML \(mapping values are not allowed here\)"):
        load_params(bad)


def test_union_errors_name_every_accepted_form():
    with pytest.raises(ParamsError, match=r"^train.workers = 'many': expected a valid integer or 'auto'$"):
        load_params("params.yaml", ["train.workers=many"])


def test_a_renamed_key_says_its_new_name(tmp_path):
    old = tmp_path / "params.yaml"
    old.write_text(Path("params.yaml").read_text().replace("regularise_min_epochs:", "mix_min_epochs:"))
    with pytest.raises(ParamsError, match="train.regularise_min_epochs: missing from params.yaml \\(it was called train.mix_min_epochs"):
        load_params(old)
    with pytest.raises(ParamsError, match="train.mix_min_epochs: renamed to train.regularise_min_epochs"):
        load_params(Path("params.yaml"), ["train.mix_min_epochs=10"])


def test_a_key_added_since_the_users_params_yaml_says_its_shipped_default(tmp_path):
    old = tmp_path / "params.yaml"
    old.write_text("\n".join(line for line in Path("params.yaml").read_text().splitlines() if not line.startswith("  min_steps:")))
    with pytest.raises(ParamsError, match=r"train.min_steps: missing from params.yaml \(new in this version; the shipped default is 0\)"):
        load_params(old)
