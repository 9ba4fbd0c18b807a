"""The Python API: what ``import smoothcert`` exports, and the README's "Python API" block run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

import smoothcert
from test_workflow import BIN, REPO, copy_repo, run

MODEL = "gaussian-fixed-l2-0.25"


def test_public_api_is_listed_and_lazy():
    assert {"Smooth", "ABSTAIN", "certify_batch", "load_config", "load_model", "certify_inputs"} <= set(dir(smoothcert))
    assert "load_model" in smoothcert.__doc__ and "certify_inputs" in smoothcert.__doc__
    for name in smoothcert.__all__:
        assert getattr(smoothcert, name) is not None
    with pytest.raises(AttributeError):
        smoothcert.nothing_here  # noqa: B018
    # importing the package (the Snakefile imports smoothcert.config) loads no torch
    probe = "import sys, smoothcert, smoothcert.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "False"


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


@pytest.mark.slow
def test_readme_reproduces_a_pipeline_row(tmp_path):
    """The README block, run in a repository after the pipeline certified the mini config's inputs."""
    root = copy_repo(tmp_path / "repo", merged_params=True)  # params.yaml = the mini config, made smaller still
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["test"].update(limit=6, shards=1)
    params["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table = f"results/digits/{MODEL}/cohen/certify.tsv"
    run([str(BIN / "snakemake"), table, "--cores", "2"], root)
    script = root / "readme_api.py"
    script.write_text(_readme_block() + "\nprint('reproduced', rows.loc[idx[3], 'radius'])\n")
    out = run([sys.executable, str(script)], root, timeout=300)
    assert out.stdout.startswith("reproduced "), out.stdout + out.stderr
