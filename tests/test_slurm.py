"""``nnunet_joint_reproduce --scheduler slurm`` on a real single-node SLURM started on localhost
(tests/slurm_cluster.py; skipped with the reason where it cannot start): the tiny study runs to
completion through slurmctld/slurmd and reports what the local run reports, and a cancelled job is
replaced by the resubmission."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_run
from nnunet_joint.study import slurm
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.reproduce import main
from nnunet_joint.study.folder import RunFolder
from slurm_cluster import SlurmUnavailable, local_slurm

pytestmark = pytest.mark.slow

#: CPU jobs that fit the test node: one CPU each (the node runs two per core), no GPU
ON_THE_TEST_NODE = ["--device", "cpu", "--slurm-gpus", "0", "--slurm-cpus", "1", "--slurm-mem", "2G"]


@pytest.fixture(scope="module")
def cluster():
    try:
        with local_slurm() as conf:
            yield conf
    except SlurmUnavailable as e:
        pytest.skip(f"no local SLURM: {e}")


def summary(run: Path) -> dict:
    return json.loads((run / "report" / "summary.json").read_text(encoding="utf-8"))


def rows(run: Path) -> dict[str, str]:
    return {e["key"]: e["status"] for e in summary(run)["experiments"]}


def report_files(run: Path) -> set[str]:
    return {str(p.relative_to(run / "report")) for p in (run / "report").rglob("*") if p.is_file()}


def test_tiny_study_runs_through_slurm_and_reports_like_the_local_run(cluster, tiny_run, tiny_reproduced, tmp_path,
                                                                      capsys):
    run = copy_run(tiny_run, tmp_path / "run", targets=False)  # the cascade: crops cut by stage 1 in a job
    # stage 1 and the LiTS models as the local run trained them (the suite's time: 2-3 min less); the jobs
    # still crop by stage 1, train every row and report, and a finished step is not submitted again
    for dataset in (501, 502):
        shutil.copytree(tiny_reproduced.results / DATASET_FOLDERS[dataset], run.results / DATASET_FOLDERS[dataset])
    start = time.monotonic()
    assert main(["--profile", "tiny", "--scheduler", "slurm", "--wait", "--out", str(run.root),
                 *ON_THE_TEST_NODE]) == 0
    wall = time.monotonic() - start
    out = capsys.readouterr().out
    submitted = json.loads((run.root / "slurm" / "jobs.json").read_text())["jobs"]
    assert {"crops", "report"} <= set(submitted) and not {"stage1", "lits", "lits-plain", "stage1-val", "lits-val"} & set(submitted)
    for step, job in submitted.items():  # printed: job id, name; each finished and logged
        assert f"{job}\tnj-{step}\t" in out
        assert slurm.ok_file(run.root, job).is_file()
        assert slurm.job_log(run.root, step, job).stat().st_size > 0
    local = tiny_reproduced.root
    assert report_files(run.root) == report_files(local)
    assert rows(run.root) == rows(local)
    assert sum(status == "done" for status in rows(run.root).values()) == len(
        [e for e in summary(local)["experiments"] if e["status"] == "done"]) > 0
    crops = json.loads((run.raw / DATASET_FOLDERS[504] / "crops.json").read_text())
    assert crops["crop_mode"] == "cascade" and crops["stage1_checkpoint_sha256"]["fold_0"]
    print(f"\nSLURM tiny study: {wall / 60:.1f} min wall, {len(submitted)} jobs")


def test_cancelled_job_is_replaced_by_the_resubmission(cluster, tiny_reproduced, tmp_path, capsys):
    run = RunFolder(tmp_path / "run")
    shutil.copytree(tiny_reproduced.root, run.root, ignore=shutil.ignore_patterns("slurm"))
    row = "Joint_LiTS-f0"
    fold = run.results / DATASET_FOLDERS[504] / "nnUNetTrainerJoint_LiTS__nnUNetSEResNet18Plans__2d" / "fold_0"
    shutil.rmtree(fold)  # one row to train again: the resubmission skips every other step
    assert main(["--profile", "tiny", "--scheduler", "slurm", "--out", str(run.root), *ON_THE_TEST_NODE]) == 0
    first = json.loads((run.root / "slurm" / "jobs.json").read_text())["jobs"]
    assert set(first) == {row, "report"}
    deadline = time.monotonic() + 300
    while slurm.active_jobs().get(first[row]) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(1)
    assert slurm.active_jobs().get(first[row]) == "RUNNING"
    subprocess.run(["scancel", first[row]], check=True)
    failed = slurm.wait_for(first, run.root, poll_s=1)
    assert failed == [f"job {first[row]} (nj-{row}) failed; see {slurm.job_log(run.root, row, first[row])}"]
    assert rows(run.root)[f"{DATASET_FOLDERS[504]}/nnUNetTrainerJoint_LiTS"].startswith("failed: fold 0 did not finish")

    assert main(["--profile", "tiny", "--scheduler", "slurm", "--wait", "--out", str(run.root),
                 *ON_THE_TEST_NODE]) == 0
    second = json.loads((run.root / "slurm" / "jobs.json").read_text())["jobs"]
    assert set(second) == {row, "report"} and second[row] != first[row]
    assert rows(run.root) == rows(tiny_reproduced.root)  # every row done again, as in the local run


def node_cpus() -> int:
    """The test node's CPUs, as tests/slurm_cluster.py configured it."""
    return os.cpu_count() or 1


def queued() -> str:
    return subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, check=True).stdout.strip()


def test_a_study_asking_more_than_the_node_has_is_refused_before_anything_is_queued(cluster, tmp_path, capsys):
    run = tmp_path / "run"
    too_many = node_cpus() + 1
    for options, problem in [
        (["--device", "cpu", "--slurm-gpus", "0", "--slurm-cpus", str(too_many), "--slurm-mem", "1G"],
         f"--slurm-cpus {too_many}: the nodes of partition debug have at most {node_cpus()} CPUs; "
         f"give --slurm-cpus {node_cpus()} or fewer"),
        (["--slurm-cpus", "1", "--slurm-mem", "1G"],  # no --device cpu: the trainings ask for a GPU
         "--slurm-gpus 1: the nodes of partition debug have no GPUs (sinfo's GRES); train on CPUs with --device cpu"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["--profile", "tiny", "--scheduler", "slurm", "--wait", "--out", str(run), *options])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {problem}") and err.count("\n") == 1
        assert queued() == "" and not (run / "slurm" / "jobs.json").exists()


def test_a_job_that_can_never_start_ends_wait_with_exit_1_naming_it_and_the_reason(cluster, tmp_path):
    """The partition's time limit drops below the jobs' --slurm-time after they were queued: SLURM keeps them
    pending (PartitionTimeLimit) for ever, and --wait says so instead of waiting."""
    run = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "nnunet_joint_reproduce"), "--profile", "tiny", "--scheduler", "slurm",
           "--wait", "--out", str(run), "--slurm-time", "10", *ON_THE_TEST_NODE]
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)  # queued, not started
    waiting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "slurm" / "jobs.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        jobs = json.loads((run / "slurm" / "jobs.json").read_text())["jobs"]
        subprocess.run(["scontrol", "update", "PartitionName=debug", "MaxTime=1", "State=UP"], check=True)
        out, err = waiting.communicate(timeout=180)
        assert waiting.returncode == 1, (out, err)
        assert (f"error: job {jobs['data']} (nj-data) can never start: SLURM keeps it pending with reason "
                "PartitionTimeLimit (its --slurm-time is above the partition's time limit)") in err
    finally:
        waiting.kill()
        waiting.communicate()
        subprocess.run(["scontrol", "update", "PartitionName=debug", "MaxTime=INFINITE", "State=UP"], check=True)
        subprocess.run(["scancel", "--user", str(os.getuid())], check=True)
