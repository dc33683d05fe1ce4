"""The run folder of a study and what marks its steps done.

A study lives in one folder: ``phantom/``, nnU-Net's three folders (``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results``; a repeat of the central comparison trains into
``repeats/repeat_<r>/nnUNet_results``), ``logs/`` (each nnU-Net command's output, and the markers
``logs/<name>.done`` that record with which settings a data step finished) and ``report/``.
nnU-Net's variables point at the folder for every command the study runs (:func:`run_nnunet`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nnunet_joint import TRAINERS_DIR
from nnunet_joint.cpu import WAIT_POLICY
from nnunet_joint.errors import InputError
from nnunet_joint.process import run_tied


@dataclass
class RunFolder:
    """The layout of one reproduce run."""

    root: Path
    #: ``--repeats``: repeat r > 0 of the repeated rows trains into ``repeats/repeat_<r>/nnUNet_results``
    #: (nnU-Net's layout below it) and logs into ``logs/repeat_<r>``; data and pretraining are shared.
    repeat: int = 0

    def repeated(self, repeat: int) -> "RunFolder":
        return dataclasses.replace(self, repeat=repeat)

    @property
    def logs(self) -> Path:
        return self.root / "logs" / (f"repeat_{self.repeat}" if self.repeat else "")

    @property
    def phantom(self) -> Path:
        return self.root / "phantom"

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        if self.repeat:
            return self.root / "repeats" / f"repeat_{self.repeat}" / "nnUNet_results"
        return self.root / "nnUNet_results"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def handcrafted(self) -> Path:
        """The handcrafted reference row's outputs (:mod:`nnunet_joint.evaluation.handcrafted`)."""
        return self.root / "handcrafted"

    @contextlib.contextmanager
    def nnunet_environment(self) -> Iterator[None]:
        """This run's nnU-Net variables in ``os.environ`` while nnU-Net code runs in this process.

        nnU-Net 2.8 reads them at use time (``nnunetv2.paths``); the previous values come back after.
        ``nnUNet_n_proc_DA`` is left alone: no in-process step augments, and a training started beside this
        block tells the user's setting from none by it (:func:`~nnunet_joint.study.training.cpu_augmentation`).
        """
        wanted = {k: v for k, v in self.environment().items() if k.startswith("nnUNet_") and k != "nnUNet_n_proc_DA"}
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def environment(self, **extra: str) -> dict[str, str]:
        """The environment every nnU-Net step of this run gets."""
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_extTrainer=str(TRAINERS_DIR))
        env.setdefault("nnUNet_n_proc_DA", "1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.setdefault(WAIT_POLICY, "PASSIVE")  # idle OpenMP threads sleep: see nnunet_joint.cpu
        env.update(extra)
        return env


def run_nnunet(cmd: list[str], run: RunFolder, log: Path, **extra_env: str) -> None:
    """Run an nnU-Net command line with the run folder's environment; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        # run_tied: the command and its workers die with this process (kill -9 included)
        returncode = run_tied(cmd, env=run.environment(**extra_env), stdout=fh, stderr=subprocess.STDOUT)
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd[:2])} failed (exit {returncode}); see {log}:\n" + "\n".join(tail))


def nnunet_bin(name: str) -> str:
    """Path of an nnU-Net console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def marker(run: RunFolder, name: str) -> Path:
    """``logs/<name>.done``: the step ``name`` finished, with the settings the file holds."""
    return run.root / "logs" / f"{name}.done"


def mark(run: RunFolder, name: str, content: dict) -> None:
    path = marker(run, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content) + "\n", encoding="utf-8")


def marked(run: RunFolder, name: str, expected: dict) -> bool:
    """Whether a step is done; done with other settings is an error (a run folder holds one study)."""
    path = marker(run, name)
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        found = {}
    for key, value in expected.items():
        if found.get(key) != value:
            raise InputError(run.root, f"was prepared with {key} {found.get(key)!r}, not {value!r}: use another --out")
    return True
