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


# ----------------------------------------------------------------------------- what the nodes have


def test_gpus_are_counted_from_sinfo_s_gres_field():
    assert slurm.gpus_of("(null)") == 0
    assert slurm.gpus_of("gpu:2") == 2
    assert slurm.gpus_of("gpu:a100:4(S:0-1)") == 4
    assert slurm.gpus_of("gpu:a100:2,gpu:v100:1,tmpdisk:100") == 3
    assert slurm.gpus_of("gpu") == 1


def test_memory_in_sbatch_units():
    assert [slurm.megabytes(m) for m in ("32G", "32g", "1500", "1500M", "2T", "2048K", "1.5G")] == [
        32 * 1024, 32 * 1024, 1500, 1500, 2 * 1024 * 1024, 2, 1536]
    with pytest.raises(InputError, match="--slurm-mem lots: not an amount"):
        slurm.megabytes("lots")


def _steps():
    from nnunet_joint.study.graph import Step

    return [Step("data", "data", "data", (), lambda: None, lambda: False),
            Step("stage1", "stage 1", "stage 1", ("data",), lambda: None, lambda: False, gpu=True)]


NODES = [slurm.Node("a", 2, 23000, 0), slurm.Node("b", 4, 16000, 0)]


@pytest.mark.parametrize("resources,problem", [
    (slurm.Resources(gpus=0, cpus=8, mem="1G"), "--slurm-cpus 8: the nodes of partition debug have at most 4 CPUs; "
                                                "give --slurm-cpus 4 or fewer"),
    (slurm.Resources(gpus=0, cpus=2, mem="32G"), "--slurm-mem 32G: the nodes of partition debug have at most 23000M "
                                                 "of memory; give --slurm-mem 23000M or less"),
    (slurm.Resources(gpus=1, cpus=2, mem="1G"), "--slurm-gpus 1: the nodes of partition debug have no GPUs (sinfo's "
                                                "GRES); train on CPUs with --device cpu"),
])
def test_jobs_no_node_can_hold_are_refused_naming_the_option(resources, problem):
    with pytest.raises(InputError) as e:
        slurm.check_fits(resources, _steps(), "debug", NODES)
    assert str(e.value).startswith(problem) and "\n" not in str(e.value)


def test_jobs_that_fit_a_node_pass_and_only_training_steps_count_their_gpus():
    slurm.check_fits(slurm.Resources(gpus=0, cpus=4, mem="23000M"), _steps(), "debug", NODES)
    slurm.check_fits(slurm.Resources(gpus=2, cpus=1, mem="1G"), _steps()[:1], "debug", NODES)  # data: no GPU
    slurm.check_fits(slurm.Resources(gpus=2, cpus=1, mem=None), _steps(), "gpu", [slurm.Node("g", 8, 64000, 2)])


def test_pending_reasons_that_no_waiting_cures():
    assert slurm.never_starts("PartitionConfig")
    assert slurm.never_starts("ReqNodeNotAvail, UnavailableNodes:n1")
    for transient in ("Resources", "Priority", "Dependency", "BeginTime", "None", ""):
        assert slurm.never_starts(transient) is None
