"""A throwaway single-node Slurm cluster on localhost, for the scale-out tests.

``SlurmCluster`` starts its own ``munged`` (private socket), ``slurmctld`` and ``slurmd``
in the foreground as child processes, and stops exactly those processes (by PID) on
exit. State, spool, log and pid files live in a fresh temporary folder and the daemons
listen on free TCP ports. The node advertises one stand-in GPU (``gres: gpu,
File=/dev/null``): jobs asking for ``--gpus=1`` are scheduled and see
``CUDA_VISIBLE_DEVICES=0``.

``slurm.conf``/``gres.conf`` have to be at the packages' default place,
``/etc/slurm``: Snakemake's slurm-jobstep executor strips every ``SLURM_*`` variable
(``SLURM_CONF`` included) before its inner ``srun``, so a private config path is not
seen there. The files are written only when ``/etc/slurm/slurm.conf`` is absent (or
left behind by a crashed run of this module), carry a marker line with the owning PID,
and are removed again on exit; a foreign ``slurm.conf`` is never touched.

Usage::

    reason = unavailable()          # None, or why this machine cannot run it
    with SlurmCluster() as cluster:
        subprocess.run(["sinfo"], env=cluster.env())
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SBIN = Path("/usr/sbin")
DAEMONS = {"munged": SBIN / "munged", "slurmctld": SBIN / "slurmctld", "slurmd": SBIN / "slurmd"}
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
MUNGE_KEY = Path("/etc/munge/munge.key")
ETC = Path("/etc/slurm")
MARKER = "# written by smoothcert tests/slurm_cluster.py, pid "


class ClusterError(RuntimeError):
    """The cluster could not be started (the message says why, with the daemons' log tails)."""


def unavailable() -> str | None:
    """Why a local cluster cannot run here (a skip reason), or ``None`` when it can be tried."""
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (daemons run as the slurm and munge users)"
    missing = [str(p) for p in DAEMONS.values() if not p.exists()]
    missing += [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return f"slurm-wlm/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY} (reinstall munge or run mungekey)"
    for user in ("slurm", "munge"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"system user {user!r} is missing (the slurm-wlm/munge packages create it)"
    return _etc_conflict()


def _etc_conflict() -> str | None:
    """Why ``/etc/slurm/slurm.conf`` cannot be (over)written, or ``None``."""
    gres = ETC / "gres.conf"
    if gres.exists() and not gres.read_text(errors="replace").startswith(MARKER):
        return f"{gres} exists (a real Slurm setup?): the test cluster will not overwrite it"
    conf = ETC / "slurm.conf"
    if not conf.exists():
        return None
    first = conf.read_text(errors="replace").split("\n", 1)[0]
    if not first.startswith(MARKER):
        return f"{conf} exists (a real Slurm setup?): the test cluster will not overwrite it"
    try:
        pid = int(first[len(MARKER) :].split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return None  # left behind by a crashed run: ours to replace
    except PermissionError:
        pass
    return f"another test cluster (pid {pid}) is using {conf}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


class SlurmCluster:
    """One controller + one compute node with ``gpus`` stand-in GPUs, all on 127.0.0.1."""

    def __init__(self, gpus: int = 1, partition: str = "debug", start_timeout: float = 60.0):
        self.gpus = gpus
        self.partition = partition
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        # Slurm drains a node whose RealMemory exceeds what it finds: stay below it.
        self.mem_mb = max(500, min(16000, int(_meminfo_mb() * 0.8)))
        self.root: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self._wrote_etc = False

    # ---------------------------------------------------------------- files
    conf = ETC / "slurm.conf"
    gres_conf = ETC / "gres.conf"

    def env(self, base: dict | None = None) -> dict:
        """An environment whose Slurm clients talk to this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        r = self.root
        slurm, munge = pwd.getpwnam("slurm"), pwd.getpwnam("munge")
        dirs = {"state": slurm, "spool": None, "log": slurm, "run": slurm, "munge": munge}
        for name, owner in dirs.items():
            (r / name).mkdir(mode=0o755)
            os.chmod(r / name, 0o755)
            if owner is not None:
                os.chown(r / name, owner.pw_uid, owner.pw_gid)
        self.munge_socket = r / "munge" / "munge.socket"
        node = (
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} "
            f"Gres=gpu:{self.gpus} State=UNKNOWN"
        )
        lines = [
            f"{MARKER}{os.getpid()}",
            "ClusterName=smoothcert",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=slurm",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` for the checks
            "SchedulerParameters=sched_interval=2",
            "GresTypes=gpu",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            node,
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        ETC.mkdir(parents=True, exist_ok=True)
        self._wrote_etc = True
        self.conf.write_text("\n".join(lines) + "\n")
        # A stand-in GPU: without File= the node is drained for a gres count mismatch.
        self.gres_conf.write_text(f"{MARKER}{os.getpid()}\nNodeName={self.host} Name=gpu File=/dev/null\n")

    # ---------------------------------------------------------------- daemons
    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        kwargs = {"user": user, "group": pwd.getpwnam(user).pw_gid} if user else {}
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,
            **kwargs,
        )
        log.close()

    def _wait(self, what: str, check, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with {proc.returncode} while waiting for {what}\n{self.logs()}")
            if check():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out waiting for {what}\n{self.logs()}")

    def _client(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=30, check=check)

    def node_state(self) -> str:
        proc = self._client("sinfo", "-h", "-N", "-n", self.host, "-o", "%T")
        return proc.stdout.strip().lower() if proc.returncode == 0 else ""

    def start(self) -> SlurmCluster:
        reason = unavailable()
        if reason:
            raise ClusterError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="smoothcert-slurm-"))
        os.chmod(self.root, 0o755)  # the slurm and munge users must reach their folders
        try:
            self._write_config()
            m = self.root / "munge"
            self._spawn(
                "munged",
                [
                    str(DAEMONS["munged"]),
                    "--foreground",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={MUNGE_KEY}",
                    f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={m / 'munged.log'}",
                    f"--seed-file={m / 'munged.seed'}",
                ],
                user="munge",
            )
            self._wait("munged's socket", self.munge_socket.exists)
            self._spawn("slurmctld", [str(DAEMONS["slurmctld"]), "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self._client("scontrol", "ping").stdout.count("UP") > 0)
            self._spawn("slurmd", [str(DAEMONS["slurmd"]), "-D", "-f", str(self.conf)])

            def node_ready() -> bool:
                state = self.node_state()
                if any(s in state for s in ("down", "drain", "unknown")) and state:
                    self._client("scontrol", "update", f"nodename={self.host}", "state=resume")
                return state.startswith("idle") or state.startswith("mixed")

            self._wait(f"node {self.host} to become idle", node_ready)
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop the daemons this object started (by PID), newest first."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._client("scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name)
                time.sleep(1)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def logs(self, tail: int = 30) -> str:
        """The last lines of each daemon log (for failure messages)."""
        out = []
        if self.root is None:
            return ""
        for path in sorted((self.root / "log").glob("*")) + sorted((self.root / "munge").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def cleanup(self) -> None:
        """Remove the config files this object wrote and its temporary folder (after :meth:`stop`)."""
        if self._wrote_etc:
            for path in (self.conf, self.gres_conf):
                try:
                    if path.read_text(errors="replace").startswith(f"{MARKER}{os.getpid()}"):
                        path.unlink()
                except FileNotFoundError:
                    pass
            self._wrote_etc = False
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()

    # ---------------------------------------------------------------- queries
    def jobs(self) -> list[dict[str, str]]:
        """All jobs slurmctld still remembers (finished ones for ``MinJobAge``), as key=value dicts."""
        proc = self._client("scontrol", "show", "job", "--oneliner")
        result = []
        for line in proc.stdout.splitlines():
            if "JobId=" not in line:
                continue
            fields = {}
            for token in line.split():
                key, sep, value = token.partition("=")
                if sep:
                    fields[key] = value
            result.append(fields)
        return result


if __name__ == "__main__":  # a smoke check: python tests/slurm_cluster.py
    why = unavailable()
    if why:
        raise SystemExit(why)
    with SlurmCluster() as c:
        print(c._client("sinfo", "-N", "-o", "%N %T %G %c %m").stdout)
        job = c._client(
            "sbatch",
            "--parsable",
            "--gpus=1",
            "--mem=100",
            "--wrap",
            "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES",
            "-o",
            str(c.root / "job.out"),
            check=True,
        )
        jid = job.stdout.strip()
        for _ in range(60):
            if not c._client("squeue", "-h", "-j", jid).stdout.strip():
                break
            time.sleep(0.5)
        print((c.root / "job.out").read_text())
        print([j.get("TresPerJob") for j in c.jobs()])
