"""Child processes that die with their parent, and a lock that keeps one run per folder.

``nnunet_joint_reproduce`` runs ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` as child
processes, and those start their own workers (data augmentation, export pools). If reproduce is
killed (``kill -9``, an out-of-memory kill, a closed terminal), nothing would stop them: they go
on writing into the run folder, and the rerun starts a second set on the same folders.

:func:`run_tied` therefore starts every command under a small guard process (Linux):

* the guard gets ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel signals it when reproduce dies,
  however it dies;
* the guard leads a new session and process group, and the command and all its workers are in
  it; on that signal the guard kills the whole group with SIGKILL;
* the command itself also gets ``PR_SET_PDEATHSIG, SIGKILL``, so it dies even if the guard is
  killed first.

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on a lock file in a run folder; the kernel
releases it when the process ends, however it ends, so a stale lock cannot block a rerun.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Callable, Sequence

from nnunet_joint.errors import InputError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LOCK_NAME = ".nnunet_joint.lock"


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies (``None`` off Linux).

    libc is loaded here, before the fork; the function itself only calls ``prctl`` and, if this
    process already died between the fork and the call, kills the child at once.
    """
    libc = _libc()
    if libc is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent is gone already: the signal will never come
            os.kill(os.getpid(), sig)

    return preexec


_GUARD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from nnunet_joint.process import _guard_main; raise SystemExit(_guard_main(sys.argv[2:]))"
)


def run_tied(cmd: Sequence[str], env: dict[str, str] | None = None, stdout: IO | None = None,
             stderr: IO | int | None = None) -> int:
    """Run ``cmd`` to completion; it and every process it starts die if this process dies.

    Returns:
        The command's exit status (negative: killed by that signal, as in :mod:`subprocess`).
    """
    package_parent = str(Path(__file__).resolve().parents[1])
    guard = subprocess.Popen([sys.executable, "-c", _GUARD_CODE, package_parent, *cmd], env=env, stdout=stdout,
                             stderr=stderr, preexec_fn=die_with_parent(signal.SIGTERM), start_new_session=True)
    try:
        return guard.wait()
    except BaseException:  # Ctrl-C or an error here: take the whole group down, then report
        _kill_group(guard.pid)
        guard.wait()
        raise


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _guard_main(cmd: list[str]) -> int:
    """The guard: run ``cmd`` in this process group; when the parent dies, kill the group."""
    group = os.getpgrp()

    def stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        _kill_group(group)  # the command, its workers and this guard
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        child = subprocess.Popen(cmd, preexec_fn=die_with_parent(signal.SIGKILL))
    except OSError as e:
        print(f"error: {cmd[0]}: {e.strerror or e}", file=sys.stderr)
        return 127
    code = child.wait()
    return code if code >= 0 else 128 - code


def lock_folder(folder: Path, command: str) -> IO:
    """Hold an exclusive lock on ``folder`` (created if needed) for as long as the returned file is open.

    Raises:
        InputError: ``folder`` is a file, or another process holds the lock (its pid is named).
    """
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "is not a folder (the run folder must be a folder or a new path)")
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise InputError(folder, f"another {command} is running on this folder (pid {owner}); wait for it to "
                                 "finish or choose another folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
