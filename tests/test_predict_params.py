import pytest

from pipeline.params import ParamsError
from tests._predict_fixtures import tiny_params


@pytest.mark.parametrize("override, message", [
    ("predict.tta=[identity,blur]", "predict.tta = \\['identity', 'blur'\\]: .*expected auto or a non-empty list of identity, hflip"),
    ("predict.tta=auto2", "predict.tta = 'auto2'"),
    ("predict.tta=[]", "predict.tta = \\[\\]"),
    ("predict.tta_merge=median", "predict.tta_merge = 'median'"),
    ("pseudo.threshold=1.5", "pseudo.threshold = 1.5: input should be less than or equal to 1"),
    ("rounds=-1", "rounds = -1"),
    ("distill.alpha=2", "distill.alpha = 2"),
])
def test_bad_predict_pseudo_params_fail_in_one_line(tmp_path, override, message):
    with pytest.raises(ParamsError, match=message):
        tiny_params(tmp_path, override)


def test_good_values(tmp_path):
    p = tiny_params(tmp_path, "predict.tta=[identity,crops]", "pseudo.threshold=null", "rounds=2")
    assert p.predict.tta == ["identity", "crops"] and p.pseudo.threshold is None and p.rounds == 2
    assert tiny_params(tmp_path, "predict.tta=auto").predict.tta == "auto"
