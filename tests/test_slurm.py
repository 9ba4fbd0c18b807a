"""The mini pipeline on a real (single-node, localhost) Slurm cluster through the slurm profile.

Checks that
* ``snakemake --profile workflow/profiles/slurm`` runs the workflow as sbatch jobs
  (snakemake-executor-plugin-slurm), with the flags a cluster without accounting needs;
* every job of a rule with ``resources: gpu=1`` was submitted with a GPU request
  (``scontrol show job``: ``TresPerJob=gres:gpu:1``) and, inside the job, saw
  ``CUDA_VISIBLE_DEVICES`` set, both in the batch script and in the ``srun`` step where the
  rule's command runs; CPU-only rules asked for no GPU;
* the certification tables equal a local run's (byte for byte apart from the wall-clock
  timing columns).

Skipped (with the reason) when not root, when slurm-wlm/munge or the executor plugin are
missing, or when the daemons do not come up. tests/slurm_cluster.py starts and stops them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import ClusterError, SlurmCluster, unavailable
from test_resume import assert_same_tables
from test_workflow import BIN, MINI, _env, copy_repo, run

ONE = Path(__file__).parent / "data" / "cohen_only.yaml"  # one experiment keeps the cluster run short

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GPU_RULES = {"train", "certify", "optimize", "video"}
TARGET = "certify_all"
# Records which Slurm job/step saw which CUDA_VISIBLE_DEVICES. It runs in the batch script
# (Snakemake's --precommand) and, through BASH_ENV, in the bash that runs the rule's command
# inside the srun step (where torch would look for the GPU).
PROBE = """
if [ -n "${SLURM_JOB_ID-}" ]; then
  mkdir -p "$PROBE_DIR"
  echo "${CUDA_VISIBLE_DEVICES-unset}" > "$PROBE_DIR/${SLURM_JOB_ID}.${SLURM_STEP_ID-batch}.$$"
fi
"""


def _slurm_command(target: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        target,
        "--profile",
        "workflow/profiles/slurm",
        "--configfile",
        str(MINI),
        str(ONE),
        # This cluster: no accounts and no accounting database (so squeue, not sacct, for status).
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--jobs",
        "4",
        "--retries",
        "0",
        "--precommand",
        "sh gpu_probe.sh",
        # Fit the one small node (the profile's memory is for real GPU nodes).
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=500",
        "runtime=10",
        "--set-resources",
        *(f"{rule}:mem_mb=1000" for rule in sorted(GPU_RULES)),
    ]


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)")
    c = SlurmCluster()
    try:
        c.start()
    except ClusterError as exc:
        pytest.skip(f"the local Slurm cluster did not start: {exc}")
    try:
        yield c
    finally:
        c.stop()
        c.cleanup()


def test_mini_pipeline_on_slurm_requests_gpus_and_matches_local(cluster, tmp_path):
    local = copy_repo(tmp_path / "local")
    root = copy_repo(tmp_path / "slurm")
    (root / "gpu_probe.sh").write_text(PROBE)
    probe_dir = tmp_path / "gpu_probe"
    env = cluster.env({**_env(), "BASH_ENV": str(root / "gpu_probe.sh"), "PROBE_DIR": str(probe_dir)})

    # The local reference runs alongside (the Slurm run mostly waits on job start-up and polling).
    ref = subprocess.Popen(
        [str(BIN / "snakemake"), TARGET, "--configfile", str(MINI), str(ONE), "--cores", "2", "--resources", "gpu=1"],
        cwd=local,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc = subprocess.run(_slurm_command(TARGET), cwd=root, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, (
            f"snakemake on Slurm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}\n{cluster.logs()}"
        )
        assert ref.wait(timeout=900) == 0, "the local reference run failed"
    finally:
        if ref.poll() is None:
            os.killpg(ref.pid, signal.SIGKILL)
            ref.wait()

    # What Slurm was asked for, per rule (finished jobs stay listed for MinJobAge).
    jobs = {}
    for job in cluster.jobs():
        rule = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
        jobs[job["JobId"]] = (rule, job)
    rules = {rule for rule, _ in jobs.values()}
    assert {"prepare_data", "train", "certify"} <= rules, f"jobs seen by Slurm: {sorted(rules)}"
    assert "gather" not in rules, "gather is a localrule: it runs on the submit host, not as a Slurm job"
    assert sum(rule == "certify" for rule, _ in jobs.values()) == 2, "one job per shard"
    for jid, (rule, job) in jobs.items():
        assert job.get("JobState") == "COMPLETED", f"job {jid} ({rule}) is {job.get('JobState')}"
        tres = job.get("TresPerJob", "") + job.get("TresPerNode", "")
        if rule in GPU_RULES:
            assert "gpu:1" in tres, f"{rule} job {jid} was not submitted with --gpus=1: {job}"
        else:
            assert "gpu" not in tres, f"{rule} job {jid} asked for a GPU it does not need"

    # What the jobs saw: the stand-in GPU in the batch script and in the srun step of every GPU job.
    seen: dict[str, dict[str, str]] = {}
    for f in probe_dir.iterdir():
        jid, step, _ = f.name.split(".")
        seen.setdefault(jid, {})[step] = f.read_text().strip()
    for jid, (rule, _) in jobs.items():
        if rule in GPU_RULES:
            assert seen.get(jid, {}).get("batch") == "0", f"{rule} job {jid}: batch env {seen.get(jid)}"
            steps = {k: v for k, v in seen.get(jid, {}).items() if k != "batch"}
            assert steps and set(steps.values()) == {"0"}, f"{rule} job {jid}: srun step env {seen.get(jid)}"

    assert_same_tables(local, root)
    assert_same_tables(local, root, pattern="shards/*.tsv")


def test_slurm_profile_dry_run_needs_no_cluster(tmp_path):
    """The profile parses and plans the full default pipeline (no daemons needed)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    root = copy_repo(tmp_path / "repo")
    out = run(
        [str(BIN / "snakemake"), "-n", "--profile", "workflow/profiles/slurm", "--configfile", str(MINI)], root
    ).stdout
    for rule in ("train", "certify", "gather", "report"):
        assert f"rule {rule}:" in out or f"\n{rule} " in out or f" {rule}\n" in out, out[-2000:]
