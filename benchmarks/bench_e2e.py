"""End-to-end cost of the default pipeline: wall time and peak memory of ``snakemake --profile workflow/profiles/local``.

Copies the repository's tracked and unignored files into a scratch directory (``harness.copy_repo``),
checks that ``snakemake -n`` plans the run, then runs the whole default workflow from scratch on
``--cores`` cores (default 2) and writes ``benchmarks/results/e2e_cpu.json`` with:

* ``wall_seconds``: wall time of the snakemake run;
* ``peak_tree_rss_mb``: the highest sum of resident memory over snakemake and all its descendants,
  sampled every ``--interval`` seconds with psutil (what the machine must hold at once);
* ``max_rss_single_process_mb``: the largest resident set of any one process of the tree
  (``/usr/bin/time -v``'s "Maximum resident set size" when present, else getrusage(RUSAGE_CHILDREN));
* ``cpu_user_seconds`` / ``cpu_system_seconds``: CPU time of the whole tree (getrusage of the children);
* ``jobs``: snakemake's job counts per rule; ``job_seconds``: summed wall time of the jobs per rule (and method),
  read from snakemake's log, to see where a change between two commits went;
* ``machine``: :func:`harness.machine`; ``commit``, ``worktree_dirty``.

``--rev REV`` runs another commit's tree (``git archive``) with that commit's package first on ``PYTHONPATH``;
run it alternately with the working tree (A B B A) to compare two commits on a shared machine.

Usage: python benchmarks/bench_e2e.py [--cores 2] [--rev REV] [--keep DIR] [--configfile extra.yaml] [--timeout 7200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

import harness

BIN = Path(sys.executable).parent


def env(src: Path | None = None) -> dict:
    """The run's environment; ``src``: a package tree to import instead of the installed one."""
    out = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
    if src is not None:
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    return out


class TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants; keeps the maximum."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.peak_procs = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            total, procs = 0, 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in tree:
                try:
                    total += p.memory_info().rss
                    procs += 1
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, procs
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def job_stats(text: str) -> dict[str, int]:
    """Parse snakemake's 'Job stats' table (the last one printed)."""
    blocks = text.split("Job stats:")
    if len(blocks) < 2:
        return {}
    jobs = {}
    for line in blocks[-1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def job_seconds(text: str) -> dict[str, float]:
    """Summed wall seconds of the finished jobs per rule (``rule/method`` where a job has a method wildcard), from
    snakemake's log: each job's start stamp (the ``[date]`` above its ``rule`` block) to its ``Finished`` stamp."""
    stamp, started, name, out, pending = None, {}, {}, {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]", line):
            stamp = datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            pending = m.group(1)
        elif (m := re.fullmatch(r"jobid: (\d+)", line)) and pending:
            started[m.group(1)], name[m.group(1)], pending = stamp, pending, None
        elif (m := re.match(r"wildcards: .*\bmethod=(\w+)", line)) and name:
            last = next(reversed(name))
            name[last] = f"{name[last]}/{m.group(1)}"
        elif (m := re.match(r"Finished jobid: (\d+)", line)) and m.group(1) in started:
            key = name[m.group(1)]
            out[key] = out.get(key, 0.0) + (stamp - started[m.group(1)]).total_seconds()
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--profile", default="workflow/profiles/local")
    ap.add_argument("--configfile", default=None, help="extra config merged over params.yaml (default: none)")
    ap.add_argument("--rev", default=None, help="run this commit's tree and package instead of the working tree")
    ap.add_argument("--keep", default=None, help="run in this directory (kept) instead of a temporary one")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between RSS samples")
    ap.add_argument("--timeout", type=int, default=7200)
    ap.add_argument("--out", default=str(harness.results_path("e2e_cpu.json")))
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="smoothcert-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    src = None
    if args.rev:
        tree = subprocess.run(["git", "archive", args.rev], cwd=harness.REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=tree, check=True)
        src = work / "src"
    else:
        harness.copy_repo(work)
    cmd = [str(BIN / "snakemake"), "--profile", args.profile, "--cores", str(args.cores)]
    if args.configfile:
        cmd += ["--configfile", str(Path(args.configfile).resolve())]
    result = {
        "command": " ".join(["snakemake", *cmd[1:]]),
        "cores": args.cores,
        "machine": harness.machine(),
        **harness.commit(),
        "workdir": str(work),
    }

    if args.rev:
        rev = subprocess.run(["git", "rev-parse", args.rev], cwd=harness.REPO, check=True, capture_output=True)
        result.update(commit=rev.stdout.decode().strip(), worktree_dirty=False, rev=args.rev)
    dry = subprocess.run([*cmd, "-n"], cwd=work, env=env(src), capture_output=True, text=True, timeout=600)
    if dry.returncode != 0:
        result.update(status="dry_run_failed", error=(dry.stderr or dry.stdout)[-2000:])
        harness.write_result(args.out, result)
        print(f"snakemake -n failed\n{result['error']}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        sys.exit(1)
    result["planned_jobs"] = job_stats(dry.stdout + dry.stderr)

    gnu_time = "/usr/bin/time" if Path("/usr/bin/time").exists() else None  # GNU time: -v reports max RSS
    full = [gnu_time, "-v", *cmd] if gnu_time else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = work / "bench_e2e.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(full, cwd=work, env=env(src), stdout=fh, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, args.interval)
        sampler.start()
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            result["timed_out"] = True
        sampler.stop()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text(errors="replace")
    max_rss_kb = after.ru_maxrss  # kB on Linux: the largest single descendant, not a sum
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        max_rss_kb = int(m.group(1))
    result.update(
        status="ok" if rc == 0 else "failed",
        returncode=rc,
        wall_seconds=round(wall, 1),
        peak_tree_rss_mb=round(sampler.peak / 2**20, 1),
        processes_at_peak=sampler.peak_procs,
        rss_samples=sampler.samples,
        rss_interval_s=args.interval,
        max_rss_single_process_mb=round(max_rss_kb / 1024, 1),
        max_rss_source="/usr/bin/time -v" if m else "getrusage(RUSAGE_CHILDREN)",
        cpu_user_seconds=round(after.ru_utime - before.ru_utime, 1),
        cpu_system_seconds=round(after.ru_stime - before.ru_stime, 1),
        jobs=job_stats(text) or result["planned_jobs"],
        job_seconds=job_seconds(text),
        load_avg_end=harness.load_avg(),
    )
    if rc != 0:
        result["log_tail"] = text[-3000:]
    harness.write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("log_tail", "machine")}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if rc == 0 else 1)


if __name__ == "__main__":
    main()
