"""``nnunet_joint_reproduce`` against what a killed or concurrent run leaves: unreadable final
checkpoints are retrained, children die with reproduce (``kill -9`` included), and a run folder
admits one reproduce at a time. No nnU-Net training here: the commands are stand-ins."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnunet_joint.errors import InputError
from nnunet_joint.names import DATASET_FOLDERS
from nnunet_joint.process import LOCK_NAME, lock_folder
from nnunet_joint.reproduce import main
from nnunet_joint.study import cli, folder, training
from nnunet_joint.study.folder import RunFolder
from nnunet_joint.study.profiles import PROFILES
from nnunet_joint.study.training import fold_done, train_fold

TRAINER = "nnUNetTrainerJoint"


def fold_dir(run: RunFolder, fold: str = "0") -> Path:
    return run.results / DATASET_FOLDERS[504] / f"{TRAINER}__nnUNetPlans__2d" / f"fold_{fold}"


def good_checkpoint(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {"w": torch.ones(64, 64)}, "current_epoch": 5}, path)
    return path.read_bytes()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def truncated(path: Path) -> None:  # killed while nnU-Net's torch.save wrote it
    data = good_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    good_checkpoint(path)
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not really a zip" * 10)


def legacy_pickle_cut_short(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps({"network_weights": {"w": [1.0] * 100}}, protocol=2)
    path.write_bytes(data[: len(data) - 20])


def hostile(path: Path) -> None:  # refused by the safe loader: not finished either, never unpickled
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}, "x": _RunsCode()}, path, pickle_protocol=2)


UNREADABLE = [truncated, empty, garbage, legacy_pickle_cut_short, hostile]


@pytest.fixture
def calls(monkeypatch) -> list[list[str]]:
    recorded: list[list[str]] = []
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: recorded.append(cmd))
    return recorded


@pytest.mark.parametrize("device, user_setting, expected", [
    ("cpu", None, "0"),  # augmentation inside the training process
    ("cpu", "3", None),  # the user's setting stands (the run folder's environment carries it)
    ("cuda", None, None),  # nnU-Net's own default: workers keep a GPU fed
])
def test_a_cpu_training_augments_in_its_own_process_unless_the_user_says_otherwise(
        tmp_path, monkeypatch, device, user_setting, expected):
    recorded = []
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: recorded.append(env))
    if user_setting is None:
        monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    else:
        monkeypatch.setenv("nnUNet_n_proc_DA", user_setting)
    train_fold(RunFolder(tmp_path / "run"), TRAINER, 504, "0", device, {"nnUNet_joint_epochs": "2"}, {"X": "1"})
    (env,) = recorded
    assert env.get("nnUNet_n_proc_DA") == expected and env["nnUNet_joint_epochs"] == "2" and env["X"] == "1"


def test_a_training_started_beside_an_in_process_nnunet_step_still_augments_in_its_own_process(tmp_path, monkeypatch):
    """The 502 preprocessing runs nnU-Net in the study's process with the run's variables in os.environ;
    stage 1, started beside it, must not read the run folder's default worker as the user's setting."""
    recorded = []
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: recorded.append(env))
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    run = RunFolder(tmp_path / "run")
    with run.nnunet_environment():  # what the lits-data step holds while it preprocesses
        train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    assert recorded[0]["nnUNet_n_proc_DA"] == "0"


@pytest.mark.parametrize("spoil", UNREADABLE, ids=[f.__name__ for f in UNREADABLE])
@pytest.mark.parametrize("validated", [True, False], ids=["validated", "validation-interrupted"])
def test_unreadable_final_checkpoint_means_retrain_from_scratch(tmp_path, calls, capsys, spoil, validated):
    run = RunFolder(tmp_path / "run")
    checkpoint = fold_dir(run) / "checkpoint_final.pth"
    spoil(checkpoint)
    if validated:
        (fold_dir(run) / "validation").mkdir()
        (fold_dir(run) / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {}}))
    assert not fold_done(fold_dir(run))
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})  # no traceback
    (cmd,) = calls
    assert cmd[-9:] == ["504", "2d", "0", "-tr", TRAINER, "-p", "nnUNetPlans", "-device", "cpu"]  # from scratch: no --val, no --c
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"warning: {checkpoint}: ") and err.rstrip().endswith(
        f"; retraining fold 0 of {TRAINER} from scratch")
    assert not checkpoint.exists()  # nothing unreadable left for a resume (--c/--val) to load


def test_a_fold_killed_during_training_continues_from_its_latest_checkpoint(tmp_path, calls, capsys):
    run = RunFolder(tmp_path / "run")
    latest = fold_dir(run) / "checkpoint_latest.pth"
    data = good_checkpoint(latest)
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    assert calls[-1][-1] == "--c" and "--val" not in calls[-1]  # nnU-Net continues from checkpoint_latest
    assert latest.read_bytes() == data and capsys.readouterr().err == ""
    good_checkpoint(fold_dir(run) / "checkpoint_final.pth")  # trained to the end: only the validation again
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    assert calls[-1][-1] == "--val" and "--c" not in calls[-1]


@pytest.mark.parametrize("spoil", UNREADABLE, ids=[f.__name__ for f in UNREADABLE])
def test_an_unreadable_latest_checkpoint_means_retrain_from_scratch(tmp_path, calls, capsys, spoil):
    run = RunFolder(tmp_path / "run")
    latest = fold_dir(run) / "checkpoint_latest.pth"
    spoil(latest)
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    (cmd,) = calls
    assert "--c" not in cmd and "--val" not in cmd
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: {latest}: ") and warning.endswith(f"retraining fold 0 of {TRAINER} from scratch")
    assert not latest.exists() and len(list(fold_dir(run).glob("checkpoint_latest.pth.refused-*"))) == 1


def test_readable_checkpoint_is_skipped_or_only_validated(tmp_path, calls, capsys):
    run = RunFolder(tmp_path / "run")
    checkpoint = fold_dir(run) / "checkpoint_final.pth"
    data = good_checkpoint(checkpoint)
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    assert calls[-1][-1] == "--val"  # trained, validation interrupted
    (fold_dir(run) / "validation").mkdir()
    (fold_dir(run) / "validation" / "summary.json").write_text("{}")
    assert fold_done(fold_dir(run))
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    assert len(calls) == 1  # finished: skipped
    assert checkpoint.read_bytes() == data and capsys.readouterr().err == ""


def test_a_training_without_validation_is_done_at_its_checkpoint_and_validated_later(tmp_path, monkeypatch, capsys):
    """``validate=False`` trains with ``nnUNet_joint_final_validation=0`` and counts as done once
    checkpoint_final.pth loads; ``validate=True`` then runs only the validation (``--val``, the variable 1)."""
    recorded = []
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: recorded.append((cmd, env)))
    run = RunFolder(tmp_path / "run")
    stale = fold_dir(run) / "validation" / "summary.json"  # of a model whose checkpoint is gone
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {}, validate=False)
    assert not stale.parent.exists()  # the retrained model's validation step must not find the old figures
    cmd, env = recorded[-1]
    assert env["nnUNet_joint_final_validation"] == "0" and "--val" not in cmd and "--c" not in cmd
    good_checkpoint(fold_dir(run) / "checkpoint_final.pth")
    assert training.fold_trained(fold_dir(run)) and not fold_done(fold_dir(run))
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {}, validate=False)
    assert len(recorded) == 1  # trained: nothing to do without the validation
    train_fold(run, TRAINER, 504, "0", "cpu", {}, {})
    cmd, env = recorded[-1]
    assert cmd[-1] == "--val" and env["nnUNet_joint_final_validation"] == "1"
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- children die with reproduce

_PARENT = """
import sys
from pathlib import Path
from nnunet_joint.study.folder import RunFolder, run_nnunet
root = Path(sys.argv[1])
# a stand-in for nnUNetv2_train: it starts a worker (like nnU-Net's augmentation processes), records both pids
child = ("import os, subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
         "open(sys.argv[1] + '.tmp', 'w').write(f'{os.getpid()} {w.pid}'); os.replace(sys.argv[1] + '.tmp', sys.argv[1]); "
         "time.sleep(120)")
run_nnunet([sys.executable, "-c", child, str(root / "pids")], RunFolder(root), root / "logs" / "train.log")
"""


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_reproduce_kills_its_nnunet_child_and_the_childs_workers(tmp_path, sig):
    root = tmp_path / "run"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(root)], env=env)
    try:
        assert wait_for(lambda: (root / "pids").is_file(), 60), "the stand-in command did not start"
        child, worker = (int(p) for p in (root / "pids").read_text().split())
        assert alive(child) and alive(worker)
        parent.send_signal(sig)
        parent.wait(10)
        assert wait_for(lambda: not alive(child) and not alive(worker), 5), "a child outlived reproduce"
    finally:
        parent.kill()
        for pid in [int(p) for p in (root / "pids").read_text().split()] if (root / "pids").is_file() else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_run_nnunet_reports_the_commands_exit_status(tmp_path):
    run = RunFolder(tmp_path)
    folder.run_nnunet([sys.executable, "-c", "print('fine')"], run, tmp_path / "ok.log")
    assert (tmp_path / "ok.log").read_text().endswith("fine\n")
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\)"):
        folder.run_nnunet([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], run, tmp_path / "x.log")


_POOL_PARENT = """
import os, sys, time
from pathlib import Path
from nnunet_joint.process import lock_folder, tied_pool
root = Path(sys.argv[1])
lock = lock_folder(root, "nnunet_joint_reproduce")  # as reproduce holds its run folder
def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()
pool = tied_pool(2)
pids = set()
while len(pids) < 2:  # tasks that overlap: both workers started
    pids = set(pool.map(pid_after, [0.5] * 4))
(root / "pids.tmp").write_text(" ".join(map(str, pids)))
os.replace(root / "pids.tmp", root / "pids")
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_tied_pool_s_workers_die_with_kill_9_of_their_parent_and_leave_the_lock_free(tmp_path):
    """The phantom generator's pool (nnunet_joint.process.tied_pool): after ``kill -9`` of the process that
    started it, no worker survives, and the run folder's lock is free for the rerun at once."""
    root = tmp_path / "run"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, "-c", _POOL_PARENT, str(root)], env=env)
    workers: list[int] = []
    try:
        assert wait_for(lambda: (root / "pids").is_file(), 60), "the pool did not start"
        workers = [int(p) for p in (root / "pids").read_text().split()]
        assert len(workers) == 2 and all(alive(w) for w in workers)
        assert all(int(Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[-1].split()[1]) == parent.pid
                   for w in workers)  # the pool's workers, children of the killed process
        parent.send_signal(signal.SIGKILL)
        assert wait_for(lambda: not any(alive(w) for w in workers), 5), "a pool worker outlived its parent"
        lock_folder(root, "nnunet_joint_reproduce").close()  # not refused: nobody holds it any more
    finally:
        parent.kill()
        parent.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


_ORPHAN_HOLDER = """
import os, sys, time
from pathlib import Path
from nnunet_joint.process import lock_folder
root = Path(sys.argv[1])
lock = lock_folder(root, "nnunet_joint_reproduce")
child = os.fork()  # inherits the locked file, as a plain fork of a worker would
if child == 0:
    time.sleep(120)
    os._exit(0)
(root / "orphan.tmp").write_text(str(child))
os.replace(root / "orphan.tmp", root / "orphan")
time.sleep(120)
"""


def test_a_lock_held_only_by_survivors_of_a_dead_owner_does_not_block_the_rerun(tmp_path, capsys):
    """The lock's recorded owner died (kill -9) but a process that inherited its locked file lives on: the rerun
    takes the lock over; a living owner still refuses the next one, naming its pid."""
    root = tmp_path / "run"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    owner = subprocess.Popen([sys.executable, "-c", _ORPHAN_HOLDER, str(root)], env=env)
    orphan = None
    try:
        assert wait_for(lambda: (root / "orphan").is_file(), 60), "the owner did not start"
        orphan = int((root / "orphan").read_text())
        refused = f"another nnunet_joint_reproduce is running on this folder \\(pid {owner.pid}\\)"
        with pytest.raises(InputError, match=refused):
            lock_folder(root, "nnunet_joint_reproduce")  # the owner lives: refused
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert alive(orphan)  # still holds the inherited lock
        taken = lock_folder(root, "nnunet_joint_reproduce")
        try:
            assert (root / LOCK_NAME).read_text() == f"{os.getpid()}\n"
            code = ("import sys; from pathlib import Path; from nnunet_joint.process import lock_folder\n"
                    "lock_folder(Path(sys.argv[1]), 'nnunet_joint_reproduce')")
            other = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True)
            assert other.returncode != 0 and f"(pid {os.getpid()})" in other.stderr
        finally:
            taken.close()
        assert sorted(p.name for p in root.iterdir()) == sorted([LOCK_NAME, "orphan"])  # no temporary file left
    finally:
        owner.kill()
        owner.wait()
        if orphan is not None and alive(orphan):
            os.kill(orphan, signal.SIGKILL)


# ----------------------------------------------------------------------------- one reproduce per run folder


def test_second_reproduce_on_the_same_folder_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    holder = lock_folder(out, "nnunet_joint_reproduce")  # as the first reproduce holds it
    try:
        with pytest.raises(SystemExit) as e:
            main(["--profile", "tiny", "--out", str(out), "--device", "cpu", "--quiet"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err == (f"error: {out}: another nnunet_joint_reproduce is running on this folder (pid {os.getpid()}); "
                       "wait for it to finish or choose another folder\n")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing started
    finally:
        holder.close()
    again = lock_folder(out, "nnunet_joint_reproduce")  # released with its holder, however it ended
    again.close()


def test_lock_of_a_killed_reproduce_does_not_block_the_rerun(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from pathlib import Path; from nnunet_joint.process import lock_folder\n"
            "h = lock_folder(Path(sys.argv[1]), 'nnunet_joint_reproduce'); print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match=f"another nnunet_joint_reproduce is running on this folder \\(pid {proc.pid}\\)"):
        lock_folder(out, "nnunet_joint_reproduce")
    proc.kill()
    proc.wait()
    proc.stdout.close()
    lock_folder(out, "nnunet_joint_reproduce").close()


def test_reproduce_closes_its_lock_file(tmp_path, monkeypatch):
    """The run folder's lock is released by closing it, not left to the garbage collector (a ResourceWarning)."""
    import gc
    import warnings

    monkeypatch.setattr(cli, "run_local", lambda steps, jobs, progress_of: {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.reproduce(tmp_path / "run", PROFILES["tiny"], quiet=True)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    lock_folder(tmp_path / "run", "nnunet_joint_reproduce").close()  # released


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "run"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["--profile", "tiny", "--out", str(a_file), "--quiet"])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {a_file}: is not a folder (the run folder must be a folder or a new path)\n"
    assert a_file.read_text() == "x"


def test_the_study_profile_runs_both_sides_of_every_question_the_papers_ask_without_imagenet():
    from nnunet_joint.study.matrix import comparisons, experiment, experiment_matrix

    study = PROFILES["study"]
    assert study.folds == (0, 1, 2)
    selected = {e for e in experiment_matrix() if e.trainer in study.rows}
    for c in comparisons():
        for framework, init, schedule in (c.better, c.baseline):
            if init != "ImageNet":
                assert experiment(framework, init, schedule, c.dataset) in selected, (c.name, framework, init, schedule)
    assert {e.dataset for e in selected if e.framework == "nnunet"} == {503, 504}  # plain nnU-Net on both
    assert experiment("nnunet", "LiTS", dataset=504) in selected  # and from LiTS on the joint labels
    assert len(selected) == 14
    assert set(study.budget) == {"nnUNet_joint_epochs", "nnUNet_joint_iterations"}  # one budget for every row


# ----------------------------------------------------------------------------- one record of an experiment's outcome


def test_each_outcome_is_worded_as_the_report_always_wrote_it_and_read_back_from_those_words():
    from nnunet_joint.evaluation.report.experiments import Outcome

    worded = {Outcome.ran(): "done", Outcome.needs_imagenet_weights(): "not run: no ImageNet weights given",
              Outcome.not_in_profile("demo"): "not run: not in the demo profile",
              Outcome.failed("fold 0 did not finish (see its log)\nTraceback ..."):
                  "failed: fold 0 did not finish (see its log)"}
    for outcome, text in worded.items():
        assert outcome.status == str(outcome) == text
        assert Outcome.from_status(text) == outcome
    assert Outcome.not_in_profile("demo").not_run_reason == "not in the demo profile"
    assert Outcome.failed("x").not_run_reason is None and Outcome.ran().not_run_reason is None
    with pytest.raises(ValueError, match="none of"):
        Outcome.from_status("not run: the cat sat on it")


def test_a_row_s_outcome_comes_from_the_study_and_its_folds(tmp_path):
    """Needs ImageNet weights (never given here), not in the profile, failed (a fold not finished, or the
    failure the step recorded), else to be evaluated (None)."""
    from nnunet_joint.evaluation.report.experiments import Outcome
    from nnunet_joint.study.matrix import experiment, experiment_matrix, step_id
    from nnunet_joint.study.reporting import training_outcome
    from nnunet_joint.study.steps import Study

    study = Study(RunFolder(tmp_path / "run"), PROFILES["demo"], folds=(0,))
    trainings = study.row_trainings()
    joint_lits, joint = experiment("joint", "LiTS"), experiment("joint")
    assert training_outcome(study, experiment("joint", "ImageNet"), trainings) == Outcome.needs_imagenet_weights()
    assert training_outcome(study, experiment("ynet"), trainings) == Outcome.not_in_profile("demo")
    assert training_outcome(study, joint, trainings) == Outcome.failed("fold 0 did not finish (see its log)")
    failure = "nnUNetv2_train failed (exit 1); see the log"
    study.failures[step_id(joint_lits, 0)] = failure
    assert training_outcome(study, joint_lits, trainings) == Outcome.failed(failure)
    fold_dir = next(t for e, _, t in trainings if e == joint).fold_dir(study.run)
    (fold_dir / "validation").mkdir(parents=True)
    (fold_dir / "validation" / "summary.json").write_text("{}")
    torch.save({"network_weights": {}}, fold_dir / "checkpoint_final.pth")
    assert training_outcome(study, joint, trainings) is None  # trained: the report step evaluates it
    assert {training_outcome(study, e, trainings) for e in experiment_matrix() if e.init == "ImageNet"} == {
        Outcome.needs_imagenet_weights()}


# ----------------------------------------------------------------------------- run folders of earlier versions

#: The markers of a run folder made before the study became a package (byte for byte, as that code wrote them
#: for ``--profile tiny``): a rerun on this code must take its data steps as done.
EARLIER_MARKERS = {"sources": '{"encoder": "seresnet18", "phantom": {"size": "tiny", "seed": 0}}\n',
                   "targets": '{"crop_mode": "cascade", "encoder": "seresnet18"}\n'}


def test_markers_are_written_and_read_as_earlier_versions_wrote_them(tmp_path):
    from nnunet_joint.study.data import sources_settings, targets_settings
    from nnunet_joint.study.folder import mark, marked, marker
    from nnunet_joint.study.steps import Study

    run = RunFolder(tmp_path / "run")
    study = Study(run, PROFILES["tiny"], folds=(0,))
    mark(run, "sources", sources_settings(study.phantom(), "seresnet18"))
    mark(run, "targets", targets_settings(Path("stage1"), "seresnet18"))
    assert {name: marker(run, name).read_text(encoding="utf-8") for name in EARLIER_MARKERS} == EARLIER_MARKERS
    steps = {s.id: s for s in study.steps()}
    # the earlier folder's one data step stands for the three that prepare the source data now
    assert all(steps[i].done() for i in ("data", "lits-data", "liver-data"))
    # a new folder: each marked by itself
    new = RunFolder(tmp_path / "new")
    steps = {s.id: s for s in Study(new, PROFILES["tiny"], folds=(0,)).steps()}
    mark(new, "converted", sources_settings(study.phantom(), "seresnet18"))
    assert steps["data"].done() and not steps["lits-data"].done() and not steps["liver-data"].done()
    assert marked(run, "targets", targets_settings(Path("stage1"), "seresnet18"))


# ----------------------------------------------------------------------------- --rows


def test_rows_selects_some_of_the_profile_s_rows_with_their_pretraining_and_stage_1(tmp_path):
    from nnunet_joint.study.steps import Study

    rows = ("nnUNetTrainerSEResNetCls_LiTS", "nnUNetTrainer_JointBudget@Dataset504_ShebaJoint")
    study = Study(RunFolder(tmp_path / "run"), PROFILES["study"], folds=(0,), rows=rows)
    ids = [s.id for s in study.steps()]
    # the classifier from LiTS on its dataset (503) and plain nnU-Net on the joint labels only, fold 0
    assert sorted(i for i in ids if i.endswith("-f0")) == ["SEResNetCls_LiTS-f0", "nnUNet504-f0"]
    assert {"data", "stage1", "lits", "crops", "report"} <= set(ids) and "lits-plain" not in ids
    # a scheduler's job rebuilds the same study
    assert study.cli()[study.cli().index("--rows") + 1:][:2] == list(rows)
    # plain nnU-Net by its trainer name alone runs on both Sheba datasets
    both = Study(RunFolder(tmp_path / "run"), PROFILES["study"], folds=(0,), rows=("nnUNetTrainer_JointBudget",))
    assert sorted(i for i in (s.id for s in both.steps()) if i.endswith("-f0")) == ["nnUNet503-f0", "nnUNet504-f0"]


def test_a_validation_step_never_trains_a_model_that_is_not_there(tmp_path, monkeypatch):
    """``--step lits-val`` run before ``lits`` (a scheduler's job out of order) stops with the missing checkpoint
    instead of training the LiTS model with its validation."""
    from nnunet_joint.errors import InputError
    from nnunet_joint.study.steps import Study

    recorded = []
    monkeypatch.setattr(training, "run_nnunet", lambda cmd, run, log, **env: recorded.append(cmd))
    step = next(s for s in Study(RunFolder(tmp_path / "run"), PROFILES["demo"], folds=(0,)).steps()
                if s.id == "lits-val")
    with pytest.raises(InputError, match="run step lits"):
        step.run()
    assert recorded == []


def test_the_head_rows_train_with_the_head_learning_rate_of_the_study_whatever_a_job_s_shell_says(tmp_path, monkeypatch):
    """Like the class weights, the head's learning-rate scale is pinned in every head row's variables (and
    shown in its command); rows without a head get none."""
    from nnunet_joint.study.steps import Study

    monkeypatch.setenv("nnUNet_joint_head_lr_scale", "0.25")
    trainings = Study(RunFolder(tmp_path / "run"), PROFILES["study"], folds=(0,)).row_trainings()
    scales = {e.framework: t.budget.get("nnUNet_joint_head_lr_scale") for e, _, t in trainings}
    assert scales == {"cls": "0.25", "ynet": "0.25", "seg": None, "joint": None, "nnunet": None}
    cls = next(t for e, _, t in trainings if e.framework == "cls")
    assert cls.command("cpu").startswith("nnUNet_joint_epochs=50 ") and "nnUNet_joint_head_lr_scale=0.25" in cls.command("cpu")


def test_a_row_the_profile_does_not_run_is_refused_in_one_line(tmp_path, capsys):
    for name in ("nnUNetTrainerSEResNetCls_LiTS", "nnUNetTrainerNoSuchRow", "nnUNetTrainerJoint@Dataset503_ShebaSeg"):
        with pytest.raises(SystemExit) as e:  # the demo runs the joint rows only; the joint model is not on 503
            main(["--profile", "demo", "--out", str(tmp_path / "run"), "--rows", name, "--quiet"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --rows {name}: not a row of profile demo (its rows: nnUNetTrainerJoint, "
                              "nnUNetTrainerJoint_LiTS;") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_row_rows_left_out_is_not_selected_unless_an_earlier_call_trained_it(tmp_path):
    from nnunet_joint.evaluation.report.experiments import Outcome
    from nnunet_joint.study.matrix import experiment
    from nnunet_joint.study.reporting import training_outcome
    from nnunet_joint.study.steps import Study

    study = Study(RunFolder(tmp_path / "run"), PROFILES["demo"], folds=(0,), rows=("nnUNetTrainerJoint_LiTS",))
    trainings = study.row_trainings()
    joint = experiment("joint")  # a demo row, left out by --rows
    assert training_outcome(study, joint, trainings) == Outcome.not_selected()
    assert Outcome.from_status(str(Outcome.not_selected())) == Outcome.not_selected()
    assert str(Outcome.not_selected()) == "not run: not among --rows"
    assert training_outcome(study, experiment("ynet"), trainings) == Outcome.not_in_profile("demo")
    # an earlier call without --rows trained it: the report shows it
    fold_dir = RunFolder(tmp_path / "run").results / DATASET_FOLDERS[504] / (
        f"{joint.trainer}__{joint.plans(study.plans)}__2d") / "fold_0"
    (fold_dir / "validation").mkdir(parents=True)
    (fold_dir / "validation" / "summary.json").write_text("{}")
    torch.save({"network_weights": {}}, fold_dir / "checkpoint_final.pth")
    assert training_outcome(study, joint, trainings) is None


def test_every_training_of_ours_gets_the_study_s_class_weight_rule_and_plain_nnunet_none(tmp_path, monkeypatch):
    from nnunet_joint.study.steps import Study

    monkeypatch.delenv("nnUNet_joint_class_weights", raising=False)
    study = Study(RunFolder(tmp_path / "run"), PROFILES["study"], folds=(0,))
    rules = {(e.framework, t.dataset): t.budget.get("nnUNet_joint_class_weights") for e, _, t in study.row_trainings()}
    assert rules[("joint", 504)] == rules[("cls", 503)] == "lesion-balanced" and rules[("nnunet", 504)] is None
    assert study.lits().budget["nnUNet_joint_class_weights"] == "lesion-balanced"
    assert "nnUNet_joint_class_weights=lesion-balanced" in study.lits().command("cpu")
    monkeypatch.setenv("nnUNet_joint_class_weights", "inverse-frequency")  # the user's choice is pinned too
    assert {t.budget["nnUNet_joint_class_weights"] for e, _, t in study.row_trainings() if e.framework != "nnunet"} == {
        "inverse-frequency"}
