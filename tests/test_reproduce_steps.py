"""The study as steps (nnunet_joint.study.graph): the order and failures of the local executor, the ETA from
measured costs only, what a resumed run counts, and the job list a scheduler gets. No training here."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from nnunet_joint.names import LITS_TRAINER
from nnunet_joint.reproduce import main
from nnunet_joint.study import steps as steps_module
from nnunet_joint.study.folder import RunFolder
from nnunet_joint.study.graph import Progress, Step, StepCosts, run_local, steps_to_run, time_left
from nnunet_joint.study.profiles import PROFILES
from nnunet_joint.study.steps import Study


def step(sid: str, after: tuple[str, ...] = (), kind: str = "k", done: bool = False, run=None, **kw) -> Step:
    return Step(sid, f"step {sid}", kind, after, run or (lambda: None), lambda: done, **kw)


# ----------------------------------------------------------------------------- ETA from measured costs only


def test_no_estimate_until_every_remaining_kind_was_timed():
    steps = [step("a", kind="data"), step("b", ("a",), kind="training")]
    assert time_left(steps, {"data": 10.0}, {}, 1) is None
    assert time_left(steps, {"data": 10.0, "training": 50.0}, {}, 1) == 60.0


def test_estimate_follows_dependencies_and_parallel_slots():
    # a (10) -> b (30), a -> c (20), (b, c) -> d (5)
    steps = [step("a", kind="A"), step("b", ("a",), kind="B"), step("c", ("a",), kind="C"),
             step("d", ("b", "c"), kind="D")]
    costs = {"A": 10.0, "B": 30.0, "C": 20.0, "D": 5.0}
    assert time_left(steps, costs, {}, 1) == 10 + 30 + 20 + 5  # one at a time: the sum
    assert time_left(steps, costs, {}, 2) == 10 + 30 + 5  # b and c side by side: the longer of them
    assert time_left(steps, costs, {}, 8) == 10 + 30 + 5  # more slots than parallel steps changes nothing


def test_running_steps_count_only_what_is_left_of_them_and_never_below_zero():
    steps = [step("a", kind="T"), step("b", ("a",), kind="T")]
    assert time_left(steps, {"T": 100.0}, {"a": 40.0}, 1) == 60 + 100
    assert time_left(steps, {"T": 100.0}, {"a": 400.0}, 1) == 100  # overran its estimate: 0 left, not negative


def test_costs_come_from_this_run_first_then_from_the_machines_calibration(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"demo|cpu": {"training": 300.0}, "tiny|cpu": {"training": 3.0}}))
    costs = StepCosts("demo|cpu", path)
    assert costs.costs() == {"training": 300.0}  # another profile's (or device's) costs never leak in
    costs.record("training", 100.0)
    costs.record("training", 200.0)
    assert costs.costs() == {"training": 150.0}  # this run's mean wins
    recorded = json.loads(path.read_text())
    assert recorded == {"demo|cpu": {"training": 200.0}, "tiny|cpu": {"training": 3.0}}  # the last one kept
    assert StepCosts("demo|cpu", path).costs() == {"training": 200.0}  # what the next run starts from


def test_shipped_costs_count_only_where_neither_this_run_nor_the_machine_timed_the_kind(tmp_path):
    path = tmp_path / "costs.json"
    shipped = {"training": 500.0, "report": 20.0, "data": 60.0}
    costs = StepCosts("demo|cpu", path, shipped=shipped)
    assert costs.costs() == shipped  # a fresh machine: the development machine's figures
    path.write_text(json.dumps({"demo|cpu": {"training": 300.0}}))
    assert costs.costs() == {"training": 300.0, "report": 20.0, "data": 60.0}  # this machine's calibration first
    costs.record("report", 10.0)
    assert costs.costs() == {"training": 300.0, "report": 10.0, "data": 60.0}  # then this run's own


def test_the_demo_ships_a_cost_for_every_kind_of_step_it_runs_and_only_on_the_cpu(tmp_path):
    """The demo's first progress line has an estimate (no kind left untimed) on a machine that timed nothing;
    another device, or nnU-Net's length, has no shipped figures."""
    from nnunet_joint.study.folder import RunFolder
    from nnunet_joint.study.profiles import PROFILES, with_nnunet_length
    from nnunet_joint.study.steps import Study

    demo = PROFILES["demo"]
    study = Study(RunFolder(tmp_path / "run"), demo, "cpu", folds=demo.folds)
    kinds = {s.kind for s in study.steps()}
    assert kinds == set(demo.cpu_step_costs) and min(demo.cpu_step_costs.values()) > 0
    assert study.step_costs().shipped == demo.cpu_step_costs
    assert Study(RunFolder(tmp_path / "run"), demo, "cuda").step_costs().shipped == {}
    assert with_nnunet_length(demo).cpu_step_costs == {}


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_progress_shows_no_eta_before_a_kind_was_timed_and_then_the_measured_one(tmp_path, capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    steps = [step("data", kind="data"), step("t1", ("data",), kind="train", iterations=60),
             step("t2", ("t1",), kind="train", iterations=60)]
    progress = Progress(steps, StepCosts("x", tmp_path / "c.json"), 1, start=clock[0])
    progress.step_started(steps[0])
    clock[0] += 30
    progress.step_finished(steps[0], None)
    progress.step_started(steps[1])
    clock[0] += 120
    progress.step_finished(steps[1], None)
    progress.step_started(steps[2])
    out = lines(capsys)
    assert out[0].startswith("[1/3] step data (elapsed 0.0 min; no estimate until")
    assert out[2] == "[2/3] step t1, 60 iterations planned (elapsed 0.5 min; no estimate until a step of each " \
                     "kind left has been timed)"
    # t2 is the same kind as the finished t1 (120 s): 2.0 min left, not the run's mean per step
    assert out[4] == "[3/3] step t2, 60 iterations planned (elapsed 2.5 min, left ~2.0 min)"


def test_a_running_training_is_measured_by_its_own_pace(tmp_path, capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    curve = tmp_path / "learning_curve.json"
    steps = [step("a", kind="row", iterations=400, progress_file=curve),
             step("b", kind="row", iterations=400, progress_file=tmp_path / "none.json"),
             step("report", ("a", "b"), kind="report")]
    progress = Progress(steps, StepCosts("x", tmp_path / "c.json"), 1, start=clock[0], heartbeat_s=60)
    progress.step_started(steps[0])
    clock[0] += 50
    curve.write_text(json.dumps({"epochs": [{"epoch": 0, "iterations": 100}]}))
    progress.heartbeat()
    # a: 100 of 400 iterations in 50 s -> 150 s left; b (same kind, not started) 400 x 0.5 s = 200 s, one slot
    # after the other; the report has no measured cost, so the figure is a lower bound naming it
    assert lines(capsys)[-1] == ("    step a: 100 of 400 iterations (elapsed 0.8 min, left at least ~5.8 min "
                                 "(not timed yet: report))")
    StepCosts("x", tmp_path / "c.json").record("report", 30.0)  # a report timed by an earlier run here
    progress.costs = StepCosts("x", tmp_path / "c.json")
    clock[0] += 50
    curve.write_text(json.dumps({"epochs": [{"epoch": 0, "iterations": 100}, {"epoch": 1, "iterations": 250}]}))
    progress.heartbeat()
    # a: 250 in 100 s (0.4 s each) -> 60 s left; b 400 x 0.4 = 160 s; the report 30 s: 250 s
    assert lines(capsys)[-1] == "    step a: 250 of 400 iterations (elapsed 1.7 min, left ~4.2 min)"


def test_progress_lines_are_not_swallowed_by_a_step_that_silences_nnunet_beside_them(tmp_path, capsys):
    """A data step running nnU-Net in this process replaces sys.stdout while it runs (quiet_stdout); the
    lines of steps finishing beside it still reach the run's output."""
    from nnunet_joint.io import quiet_stdout

    step = Step("stage1", "stage 1", "stage 1", (), lambda: None, lambda: False)
    progress = Progress([step], StepCosts("test", tmp_path / "costs.json"))
    with quiet_stdout():
        print("nnU-Net's own chatter")
        progress.step_started(step)
    out = capsys.readouterr().out
    assert "[1/1] stage 1" in out and "chatter" not in out


def test_finished_training_reports_iterations_from_its_learning_curve(tmp_path, capsys):
    curve = tmp_path / "learning_curve.json"
    curve.write_text(json.dumps({"epochs": [{"epoch": 0, "iterations": 25}, {"epoch": 1, "iterations": 50}]}))
    t = step("t", kind="train", iterations=100, progress_file=curve)
    progress = Progress([t], StepCosts("x", tmp_path / "c.json"), 1)
    progress.step_started(t)
    progress.step_finished(t, "nnUNetv2_train failed (exit 1)")
    assert re.match(r"    failed: step t in 0\.\d min, 50 of 100 iterations", lines(capsys)[-1])


def test_heartbeat_shows_iterations_of_running_trainings_when_they_moved(tmp_path, capsys):
    curve = tmp_path / "learning_curve.json"
    t = step("t", kind="train", iterations=100, progress_file=curve)
    progress = Progress([t], StepCosts("x", tmp_path / "c.json"), 1)
    progress.step_started(t)
    progress.heartbeat()  # no curve yet: nothing to say
    curve.write_text(json.dumps({"epochs": [{"epoch": 0, "iterations": 25}]}))
    progress.heartbeat()
    progress.heartbeat()  # unchanged: no second line
    out = lines(capsys)
    assert len(out) == 2 and out[1].startswith("    step t: 25 of 100 iterations (elapsed ")


def test_a_resumed_run_counts_only_what_is_left(tmp_path, capsys):
    steps = [step("data", done=True), step("s1", ("data",), done=True), step("crops", ("s1",), done=False),
             step("row", ("crops",), done=True), step("report", ("row",))]
    todo = steps_to_run(steps)
    # the row's outputs are there, but the crops under it are remade: it is stale, so it runs again
    assert [s.id for s in todo] == ["crops", "row", "report"]
    run_local(steps, 1, lambda left: Progress(left, StepCosts("x", tmp_path / "c.json"), 1))
    assert [line.split("]")[0] for line in lines(capsys) if line.startswith("[")] == ["[1/3", "[2/3", "[3/3"]


# ----------------------------------------------------------------------------- the local executor


def test_local_executor_respects_dependencies_and_optional_failures(tmp_path):
    order: list[str] = []

    def doing(sid, fail=False):
        def run():
            order.append(sid)
            if fail:
                raise RuntimeError(f"{sid} broke\nsecond line")
        return run

    steps = [step("data", run=doing("data")), step("a", ("data",), run=doing("a", fail=True), optional=True),
             step("b", ("data",), run=doing("b"), optional=True), step("report", ("a", "b"), run=doing("report"))]
    outcome = run_local(steps, 2, lambda left: Progress(left, StepCosts("x", tmp_path / "c.json"), 2, quiet=True))
    assert outcome == {"data": None, "a": "a broke", "b": None, "report": None}
    assert order[0] == "data" and order[-1] == "report"  # the report runs although a row failed

    required = [step("data", run=doing("data2", fail=True)), step("a", ("data",), run=doing("never"))]
    with pytest.raises(RuntimeError, match="step data failed: data2 broke"):
        run_local(required, 2, lambda left: Progress(left, StepCosts("x", tmp_path / "c.json"), 2, quiet=True))
    assert "never" not in order


def test_a_cycle_is_refused():
    from nnunet_joint.study.graph import check_graph

    with pytest.raises(ValueError, match="cycle"):
        check_graph([step("a", ("b",)), step("b", ("a",))])


# ----------------------------------------------------------------------------- the job list


def ancestors(jobs: dict[str, dict], jid: str) -> set[str]:
    seen: set[str] = set()
    stack = list(jobs[jid]["after"])
    while stack:
        d = stack.pop()
        if d not in seen:
            seen.add(d)
            stack.extend(jobs[d]["after"])
    return seen


@pytest.mark.parametrize("profile", ["tiny", "study"])
def test_job_list_is_the_studys_dag(tmp_path, profile):
    out = tmp_path / "jobs.json"
    assert main(["--profile", profile, "--out", str(tmp_path / "run"), "--write-jobs", str(out), "--quiet",
                 "--slurm-partition", "gpu", "--slurm-time", "1-00:00:00"]) == 0
    listed = json.loads(out.read_text())
    jobs = {j["id"]: j for j in listed["jobs"]}
    assert len(jobs) == len(listed["jobs"])
    position = {j["id"]: i for i, j in enumerate(listed["jobs"])}
    for j in listed["jobs"]:  # listed in an order a scheduler can submit: every dependency first (so no cycle)
        assert all(position[d] < position[j["id"]] for d in j["after"]), j["id"]
        assert j["command"][-2:] == ["--step", j["id"]] and j["name"] == "nj-" + j["id"]
        assert "--out" in j["command"] and not j["done"]
        assert j["resources"]["partition"] == "gpu" and j["resources"]["time"] == "1-00:00:00"
    study = Study(RunFolder(tmp_path / "run"), PROFILES[profile], folds=PROFILES[profile].folds)
    trainings = study.row_trainings()
    rows = [j for j in listed["jobs"] if j["optional"]]
    assert len(rows) == len(trainings) == len(study.runnable()) * len(PROFILES[profile].folds)
    assert any(e.init == "LiTS" for e, _, _ in trainings) and any(e.init != "LiTS" for e, _, _ in trainings)
    for e, fold, t in trainings:
        job = next(j for j in rows if j["description"] == t.what)
        assert {"data", "crops", "stage1"} <= ancestors(jobs, job["id"])  # the cascade's crops come from stage 1
        # a LiTS row waits on its own pretraining: ours on the SE-ResNet LiTS model, plain nnU-Net on its U-Net's
        pretraining = "lits-plain" if e.framework == "nnunet" else "lits"
        assert (pretraining in ancestors(jobs, job["id"])) == (e.init == "LiTS"), job["id"]
        assert not {"lits", "lits-plain"} - {pretraining} & ancestors(jobs, job["id"]), job["id"]
        # a row needs its pretraining's checkpoint, not its final validation
        assert not {a for a in ancestors(jobs, job["id"]) if a.endswith("-val")}, job["id"]
        assert job["resources"]["gpus"] == 1  # the default device of a scheduler's jobs is a GPU
    assert set(jobs["report"]["after"]) >= {j["id"] for j in rows} | {"stage1-val", "lits-val"}
    for training in ("stage1", "lits"):  # each pretraining's final validation is a step of its own, after it
        assert jobs[f"{training}-val"]["after"] == [training] and jobs[f"{training}-val"]["command"][-1].endswith("-val")
    assert jobs["crops"]["after"] == ["lits-data", "stage1"]  # 502's plans and stage 1's checkpoint
    # 501 and 502 are preprocessed side by side, each pretraining waiting only on its own dataset
    assert jobs["lits-data"]["after"] == jobs["liver-data"]["after"] == ["data"]
    assert jobs["stage1"]["after"] == ["liver-data"] and jobs["lits"]["after"] == ["lits-data"]
    assert set(jobs["report"]["after_optional"]) == {j["id"] for j in rows}  # a failed row still gets a report
    assert "gpus" not in jobs["data"]["resources"] and "gpus" not in jobs["report"]["resources"]
    assert jobs["lits"]["description"].startswith(f"LiTS lesion pretraining: {LITS_TRAINER}")
    assert not list(Path(tmp_path / "run").glob("nnUNet_*"))  # writing the list ran nothing


def test_repeats_train_the_central_comparison_again_seeded_into_their_own_results(tmp_path):
    out = tmp_path / "jobs.json"
    assert main(["--profile", "demo", "--out", str(tmp_path / "run"), "--write-jobs", str(out), "--quiet",
                 "--repeats", "3"]) == 0
    jobs = {j["id"]: j for j in json.loads(out.read_text())["jobs"]}
    repeats = {i for i in jobs if "-r" in i.rsplit("-f", 1)[-1]}
    # the demo's two rows are the central comparison: each trained twice more on fold 0
    assert repeats == {"Joint-f0-r1", "Joint-f0-r2", "Joint_LiTS-f0-r1", "Joint_LiTS-f0-r2"}
    assert "lits" in jobs["Joint_LiTS-f0-r2"]["after"] and "lits" not in jobs["Joint-f0-r1"]["after"]
    assert repeats <= set(jobs["report"]["after_optional"])
    assert jobs["Joint-f0-r2"]["command"][-4:] == ["--repeats", "3", "--step", "Joint-f0-r2"]

    study = Study(RunFolder(tmp_path / "run"), PROFILES["demo"], folds=(0,), repeats=3)
    trained = {(e.init, fold, r): t for e, fold, r, t in study.repeat_trainings()}
    assert set(trained) == {(init, 0, r) for init in ("scratch", "LiTS") for r in (1, 2)}
    assert trained[("LiTS", 0, 2)].env["nnUNet_joint_seed"] == "2"
    # the same pretrained LiTS model as the main run's: pretraining runs once per study
    main_env = dict(next(t.env for e, _, t in study.row_trainings() if e.init == "LiTS"))
    assert trained[("LiTS", 0, 2)].env["nnUNet_joint_lits_checkpoint"] == main_env["nnUNet_joint_lits_checkpoint"]
    assert trained[("scratch", 0, 1)].fold_dir(study.run.repeated(1)) == (
        tmp_path / "run" / "repeats" / "repeat_1" / "nnUNet_results" / "Dataset504_ShebaJoint"
        / "nnUNetTrainerJoint__nnUNetSEResNet18Plans__2d" / "fold_0")
    assert Study(RunFolder(tmp_path / "run"), PROFILES["demo"], folds=(0,)).repeat_trainings() == []


def test_repeats_below_one_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "demo", "--out", str(tmp_path / "run"), "--repeats", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --repeats must be at least 1")


def test_a_study_cut_short_holds_the_central_comparison_on_every_fold_first(tmp_path):
    """The order ready steps start in: stage 1, the LiTS model and the crops, then joint from LiTS and
    from scratch on all folds, their repeats fold by fold, plain nnU-Net's pretraining, the rest by fold,
    the pretrainings' validations."""
    study = Study(RunFolder(tmp_path / "run"), PROFILES["study"], folds=(0, 1, 2), repeats=3)
    ids = [s.id for s in study.steps()]
    assert ids[:6] == ["data", "lits-data", "liver-data", "stage1", "lits", "crops"]
    ids = ids[2:]  # the rest as before the LiTS datasets were preprocessed in steps of their own
    central = ids[4:10]
    assert sorted(central) == sorted(f"{r}-f{f}" for r in ("Joint", "Joint_LiTS") for f in range(3))
    assert [c.rsplit("-f", 1)[1] for c in central] == ["0", "0", "1", "1", "2", "2"]
    repeats = ids[10:22]
    assert [r.rsplit("-f", 1)[1] for r in repeats] == ["0-r1", "0-r1", "0-r2", "0-r2", "1-r1", "1-r1", "1-r2",
                                                       "1-r2", "2-r1", "2-r1", "2-r2", "2-r2"]
    assert ids[22] == "lits-plain" and ids[-1] == "report"
    assert ids[-4:-1] == ["stage1-val", "lits-val", "lits-plain-val"]  # only the report reads them
    rest = ids[23:-4]
    assert len(rest) == 3 * (len(study.runnable()) - 2)
    folds = [int(r.rsplit("-f", 1)[1]) for r in rest]
    assert folds == sorted(folds) and folds.count(0) == folds.count(2) == len(rest) // 3
    assert len(set(ids)) == len(ids)  # nothing lost or doubled by the reordering


def test_the_crops_step_predicts_on_its_share_of_the_cores_beside_the_trainings(tmp_path, monkeypatch):
    """With two jobs stage 1 crops the Sheba slices on cpu_count // 2 torch threads, as each training
    beside it gets (nnUNet_joint_threads): two threads beside a training overbook a 2-core machine."""
    from nnunet_joint.study import cropping

    monkeypatch.setattr(steps_module, "cpu_threads", lambda: 4)
    given = []
    monkeypatch.setattr(cropping, "prepare_targets", lambda *args: given.append(args))
    study = Study(RunFolder(tmp_path / "run"), PROFILES["demo"], "cpu", folds=(0,), jobs=PROFILES["demo"].jobs)
    assert study.jobs == 2 and study.threads_env() == {"nnUNet_joint_threads": "2"}
    cropping.make_crops(study)
    assert given[0][-1] == 2
    one_job = Study(RunFolder(tmp_path / "run1"), PROFILES["full"], "cpu", folds=(0,), jobs=1)
    assert one_job.threads_per_job() is None and one_job.threads_env() == {}
