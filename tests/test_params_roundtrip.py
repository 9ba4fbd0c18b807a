"""params.yaml survives ``dvc exp run -S``: DVC's own rewrite changes the lines set and nothing else.

``dvc exp run -S key=value`` rewrites params.yaml through ``dvc.utils.hydra.apply_overrides`` (a ruamel
round trip that replaces every list, writes null as an empty value and drops comments inside or after a
list). params.yaml is written in the form that rewrite produces, so no comment, style or value is lost.
"""

from __future__ import annotations

import difflib
import shutil

import pytest
import yaml

from smoothcert import config as config_mod
from test_workflow import REPO

pytest.importorskip("dvc")
from dvc.utils.hydra import apply_overrides  # noqa: E402

PARAMS = REPO / "params.yaml"


def _rewrite(tmp_path, overrides: list[str]):
    path = tmp_path / "params.yaml"
    shutil.copy(PARAMS, path)
    apply_overrides(str(path), overrides)
    changed = [
        line[1:]
        for line in difflib.unified_diff(PARAMS.read_text().splitlines(), path.read_text().splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return path, changed  # the lines removed or added


def test_params_yaml_is_a_fixed_point_of_dvcs_rewrite(tmp_path):
    path, changed = _rewrite(tmp_path, ["seed=0"])  # sets a value to what it is
    assert path.read_text() == PARAMS.read_text(), "dvc exp run -S would reformat params.yaml"
    assert not changed


@pytest.mark.parametrize(
    ("override", "key", "value", "lines"),
    [
        ("certify.n=2000", ("certify", "n"), 2000, 2),  # one line out, one in
        ("data.train_limit=500", ("data", "train_limit"), 500, 2),
        ("test.limit=null", ("test", "limit"), None, 2),
        ("report.radii.l1=[0.0,0.5]", ("report", "radii", "l1"), [0.0, 0.5], 7),  # at most the two lists
    ],
)
def test_dvc_exp_set_changes_only_what_it_sets(tmp_path, override, key, value, lines):
    path, changed = _rewrite(tmp_path, [override])
    assert 0 < len(changed) <= lines, changed
    expected = yaml.safe_load(PARAMS.read_text())
    node = expected
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    rewritten = config_mod.load(path)  # validates against the schema
    assert rewritten == config_mod.validate(expected)
    # every comment survives
    comments = [line.split("#", 1)[1] for line in PARAMS.read_text().splitlines() if "#" in line]
    assert [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line] == comments
