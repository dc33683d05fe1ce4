"""SLURM client behaviour that a live cluster cannot be made to show on demand: a busy slurmctld."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nnunet_joint.study import slurm
from nnunet_joint.errors import InputError

BUSY = "slurm_load_jobs error: Socket timed out on send/recv operation"


def squeue_failing(tmp_path: Path, failures: int) -> Path:
    """An ``squeue`` on PATH that answers like a busy controller ``failures`` times, then lists job 12."""
    script = tmp_path / "bin" / "squeue"
    script.parent.mkdir()
    calls = tmp_path / "calls"
    script.write_text(f"""#!/bin/sh
echo x >> {calls}
if [ $(wc -l < {calls}) -le {failures} ]; then echo "{BUSY}" >&2; exit 1; fi
echo "12 RUNNING"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return calls


def test_a_busy_controller_is_asked_again(tmp_path, monkeypatch):
    calls = squeue_failing(tmp_path, failures=2)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert slurm.active_jobs(attempts=4, retry_s=0.01) == {"12": "RUNNING"}
    assert len(calls.read_text().splitlines()) == 3


def test_a_controller_busy_for_every_attempt_is_an_error_line(tmp_path, monkeypatch):
    calls = squeue_failing(tmp_path, failures=10)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(InputError, match="squeue failed: slurm_load_jobs error: Socket timed out"):
        slurm.active_jobs(attempts=3, retry_s=0.01)
    assert len(calls.read_text().splitlines()) == 3
