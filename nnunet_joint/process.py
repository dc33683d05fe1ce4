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

Process pools started in this process (the phantom generator's, :func:`tied_pool`) get the same
signal in each worker (``PR_SET_PDEATHSIG, SIGKILL`` from the pool's initializer), so a ``kill -9``
of reproduce while the pool works leaves no worker behind.

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on a lock file in a run folder and writes its
pid there; the kernel releases it when the process ends, however it ends. A forked child shares the
lock (it shares the open file), so a pool worker closes its copy at start; and should processes
that inherited it outlive their parent anyway, a rerun that finds the recorded owner dead takes the
lock over instead of refusing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
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


def exit_with_parent(parent: int) -> None:
    """A process pool's ``initializer``: this worker is killed (SIGKILL) when ``parent`` dies, and drops its
    inherited copies of the folder locks (:func:`lock_folder`), which belong to the parent alone.

    Linux signals a worker when the *thread* that started it ends; a pool is started and shut down by
    one thread (:func:`tied_pool`'s caller), so that thread outlives the workers unless the process dies.
    """
    for fd, file in _held_locks.items():
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) == file:
                os.close(fd)
        except OSError:  # closed since
            pass
    libc = _libc()
    if libc is None:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl: the signal will never come
        os.kill(os.getpid(), signal.SIGKILL)


def tied_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process (``kill -9`` included, :func:`exit_with_parent`)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent, initargs=(os.getpid(),))


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


#: descriptor -> (device, inode) of the folder locks this process took (a forked pool worker closes its copies
#: of those still open on that file)
_held_locks: dict[int, tuple[int, int]] = {}


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie is dead: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): os.kill said it exists
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _try_lock(path: Path) -> IO | None:
    """``path`` opened and exclusively locked, or ``None`` when another holds the lock. A lock file replaced
    while it was being locked (a takeover, :func:`_take_over`) is opened again."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


def _owner(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _take_over(folder: Path, dead: int) -> IO | None:
    """The lock of ``folder`` whose recorded owner ``dead`` died, held by processes that inherited it: a fresh
    lock file, locked and renamed over the old one, under a lock of the folder itself so that two reruns
    cannot both take over. ``None`` when another process took it over first."""
    path = folder / LOCK_NAME
    guard = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _owner(path) != dead:
            return None
        fresh = folder / f"{LOCK_NAME}.{os.getpid()}"
        handle = open(fresh, "w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
        os.replace(fresh, path)
        return handle
    finally:
        os.close(guard)


def lock_folder(folder: Path, command: str) -> IO:
    """Hold an exclusive lock on ``folder`` (created if needed) for as long as the returned file is open.

    The lock file records the holder's pid. A lock held only by processes that outlived its recorded
    owner (workers that inherited it) does not block: it is taken over (:func:`_take_over`).

    Raises:
        InputError: ``folder`` is a file, or another living process holds the lock (its pid is named).
    """
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "is not a folder (the run folder must be a folder or a new path)")
    folder.mkdir(parents=True, exist_ok=True)
    handle = _try_lock(folder / LOCK_NAME)
    if handle is None:
        owner = _owner(folder / LOCK_NAME)
        if owner is not None and not process_alive(owner):
            handle = _take_over(folder, owner)
        if handle is None:
            raise InputError(folder, f"another {command} is running on this folder (pid {owner or 'unknown'}); wait "
                                     "for it to finish or choose another folder")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    stat = os.fstat(handle.fileno())
    _held_locks[handle.fileno()] = (stat.st_dev, stat.st_ino)
    return handle
