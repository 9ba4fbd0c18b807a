"""report.html opens on the results: the Snakemake report's front page (workflow/report/workflow.rst) shows the
results page's headline, claims and first figure, checked in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "report"
CHROMIUM = shutil.which("chromium")


def test_snakefile_declares_the_front_page():
    """The real workflow names the description and the report rule writes the file it includes."""
    assert (
        'report: "workflow/report/workflow.rst" if os.path.exists("report/front.rst")'
        in (REPO / "Snakefile").read_text()
    )
    assert ".. include:: report/front.rst" in (REPO / "workflow" / "report" / "workflow.rst").read_text()
    assert 'front=f"{REPORT}/front.rst"' in (REPO / "workflow" / "rules" / "report.smk").read_text()


def test_front_page_text(tmp_path):
    """front.rst: the page's title and headline, the claims as a table, the first figure embedded; markup escaped."""
    from smoothcert import config
    from smoothcert.reporting.build import build_report

    imports = [f"cohen@0.25={FIX / 'cohen.tsv'}", f"ddrs_pub@0.25={FIX / 'ddrs_final.tsv'}"]
    build_report(config.load(REPO / "params.yaml"), None, tmp_path, imports=imports)
    text = (tmp_path / "front.rst").read_text()
    head = next(line for line in (tmp_path / "page.md").read_text().splitlines() if line.startswith("**Headline**"))
    title = "imported tables — cohen, ddrs\\_pub at ℓ2 σ = 0.25: does it reproduce the papers?"
    assert text.startswith(f"{title}\n{'=' * len(title)}\n")
    assert "2 imported tables, no run of this config" in text and "digits" not in text
    assert "**Headline**: best certified accuracy at ℓ2 r = 0.5" in text and "ddrs\\_pub" in text
    assert head.split(": ", 1)[1].replace("_", "\\_") in text
    assert ".. csv-table:: Claims of the seed papers" in text and "certified\\@0.5" in text
    assert ".. image:: data:image/png;base64," in text
    assert max(len(line) for line in text.splitlines()) < 1000  # docutils refuses very long lines


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); CI installs it")
def test_report_html_opens_on_the_results(tmp_path):
    """A Snakemake report with the project's front page, rendered by headless Chromium: the first screen holds the
    headline, the claims table and the first figure, not the job graph."""
    from smoothcert import config
    from smoothcert.reporting.build import build_report

    imports = [f"cohen@0.25={FIX / 'cohen.tsv'}", f"ddrs@0.25={FIX / 'ddrs_final.tsv'}"]
    build_report(config.load(REPO / "params.yaml"), None, tmp_path / "stage", imports=imports)
    (tmp_path / "Snakefile").write_text(
        f'configfile: "{REPO / "params.yaml"}"\n\n\nreport: "{REPO / "workflow" / "report" / "workflow.rst"}"\n\n\n'
        'rule all:\n    input:\n        report("report/certified_accuracy_l2.png", category="Plots"),\n'
        '        report("report/claims.csv", category="Tables"),\n        "report/front.rst",\n\n\n'
        'rule copy:\n    output:\n        "report/{name}",\n    shell:\n        "cp stage/{wildcards.name} {output}"\n'
    )
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1"]
    subprocess.run([*snakemake, "--quiet"], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run([*snakemake, "--report", "report.html"], cwd=tmp_path, check=True, capture_output=True)
    url = (tmp_path / "report.html").as_uri()
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    dom = subprocess.run([*browser, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout
    dom = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # what the page rendered, not its script's data
    assert "imported tables — cohen, ddrs at ℓ2 σ = 0.25: does it reproduce the papers?" in dom
    assert "digits" not in dom  # the config's data is not what imported tables certify
    assert "Claims of the seed papers" in dom and "best certified accuracy at ℓ2 r = 0.5" in dom
    assert 'src="data:image/png;base64,' in dom  # the first figure, embedded
    shot = tmp_path / "front.png"
    subprocess.run(
        [*browser, "--window-size=1280,1600", f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 20_000  # a rendered page with a figure, not a blank one
