"""A real single-node SLURM cluster on localhost for the tests: Debian's ``slurm-wlm`` and ``munge``.

:func:`local_slurm` writes a munge key and a ``slurm.conf`` into a fresh folder, starts ``munged``,
``slurmctld`` and ``slurmd`` in the foreground (as child processes of the test session, on free
ports), waits until ``sinfo`` shows the node idle and points ``SLURM_CONF`` at it; on exit it
cancels the cluster's jobs and stops the three daemons. Whatever keeps it from starting (not root,
a missing program, a daemon that exits) is raised as :class:`SlurmUnavailable` with the reason and
the daemon's log, for the tests to skip with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


class SlurmUnavailable(RuntimeError):
    """The local cluster could not start (the reason is the message)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def slurm_conf(folder: Path, cpus: int, memory_mb: int, munge_socket: Path) -> str:
    """One node (localhost) in one partition; jobs share its cores (``OverSubscribe=FORCE:2``: two
    1-CPU jobs per core), no accounting, no cgroups (``proctrack/linuxproc``, ``task/none``)."""
    return "\n".join([
        "ClusterName=njtest", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}", "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
        "MinJobAge=600", "SchedulerParameters=sched_interval=2",
        f"NodeName=localhost CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:2", ""])


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def local_slurm(timeout_s: float = 60.0) -> Iterator[Path]:
    """A running single-node cluster; yields its ``slurm.conf`` (also in ``SLURM_CONF`` meanwhile)."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster runs slurmd as root, and this is not root")
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
    folder = Path(tempfile.mkdtemp(prefix="nj-slurm-"))  # short: the munge socket path has a length limit
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = folder / "munge.sock"
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, os.cpu_count() or 1, max(1024, _memory_mb() - 2048), munge_socket))
    daemons: list[subprocess.Popen] = []
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)

    def start(cmd: list[str], log: Path) -> None:
        with open(folder / f"{Path(cmd[0]).name}.out", "w") as out:
            daemons.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(0.5)
        if daemons[-1].poll() is not None:
            raise SlurmUnavailable(f"{Path(cmd[0]).name} exited ({daemons[-1].returncode}): {_tail(log)} "
                                   f"{_tail(folder / f'{Path(cmd[0]).name}.out')}")

    try:
        start(["munged", "-F", f"--key-file={key}", f"--socket={munge_socket}", f"--pid-file={folder / 'munged.pid'}",
               f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'munge.seed'}", "--force"],
              folder / "munged.log")
        start(["slurmctld", "-D", "-i", "-f", str(conf)], folder / "slurmctld.log")
        start(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], folder / "slurmd.log")
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            probe = subprocess.run(["sinfo", "--noheader", "--format", "%T"], capture_output=True, text=True)
            state = (probe.stdout or probe.stderr).strip()
            if probe.returncode == 0 and state == "idle":
                break
            time.sleep(1)
        else:
            raise SlurmUnavailable(f"the node did not become idle in {timeout_s:.0f} s (sinfo: {state!r}); "
                                   f"slurmctld: {_tail(folder / 'slurmctld.log')}; "
                                   f"slurmd: {_tail(folder / 'slurmd.log')}")
        yield conf
    finally:
        if daemons:  # the jobs' processes (slurmstepd) would outlive the daemons
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], capture_output=True)
            for _ in range(30):
                left = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True).stdout.strip()
                if not left:
                    break
                time.sleep(1)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(folder, ignore_errors=True)
