"""Loading checkpoints without running code from them, and transferring weights between tasks.

``torch.load(weights_only=False)`` — what nnU-Net's trainer, predictor and pretrained-weight
loader use — executes whatever a pickle asks for, so a hostile checkpoint runs code. Here every
``.pth``/``.pt``/``.model`` file goes through :func:`safe_torch_load`: ``weights_only=True``
plus an explicit allow-list of the few plain types nnU-Net 2.8 checkpoints contain (numpy
scalars in the training log). A refused file is never retried unsafely: an attacker can always
make the safe load fail. Weights we export are written as safetensors, which cannot carry code.

A refused checkpoint in a run folder is evidence, not rubbish: :func:`set_aside_refused_checkpoint`
moves it beside itself under a name that says why, and one that would have run code is recorded
in the run folder's :data:`SECURITY_EVENTS` (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from nnunet_joint.errors import InputError, warn
from nnunet_joint.io import write_json

TORCH_SUFFIXES = (".pth", ".pt", ".model", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

#: Wrapper keys under which checkpoints keep their state dict (nnU-Net, Lightning/timm, others).
STATE_DICT_WRAPPERS = ("network_weights", "state_dict", "model")
#: Key prefixes added by DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _numpy_allow_list() -> list[Any]:
    """Numpy globals needed to unpickle numeric scalars (nnU-Net logs ``np.float64``/``np.float32``).

    ``scalar`` rebuilds a number from its bytes and a dtype; the dtype classes are the numeric
    ones only (no object dtype, which could smuggle arbitrary objects). Pickles written under
    numpy 1.x name ``numpy.core.multiarray.scalar``; that alias is allowed too.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list[Any] = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    numeric = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
               "Float16", "Float32", "Float64")
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        allowed += [getattr(dtypes, f"{name}DType") for name in numeric if hasattr(dtypes, f"{name}DType")]
    return allowed


#: Everything beyond torch's own weights-only set that a checkpoint may contain.
#: ``torch.device`` (nnU-Net's ``init_args``), tuples, dicts, lists, str, int, float, None are
#: accepted by torch already.
SAFE_GLOBALS: list[Any] = _numpy_allow_list()


def _refusal_detail(message: str) -> str:
    """The line of torch's long weights-only message that says what was refused."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported GLOBAL", "Unsupported global", "Unsupported operand",
                            "Can only build")):
            return line.split(". Please use")[0].split(" was not an allowed global")[0]
    return "content outside the allow-list"


#: ``warnings.catch_warnings`` swaps process-wide state; trainings load checkpoints from several threads.
_LOAD_WARNINGS_LOCK = threading.Lock()


class UnsafeCheckpoint(InputError):
    """The safe loader refused a checkpoint because loading it needs more than the allow-list: code could run."""


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and only :data:`SAFE_GLOBALS` allowed.

    torch's warnings during the load (e.g. about an unusual pickle protocol) are held back: after
    a refusal they would print before, and distract from, the one ``error:`` line; after a
    successful load they are issued as usual.

    Raises:
        UnsafeCheckpoint: the file would need anything beyond tensors, plain containers and
            numeric numpy scalars (e.g. a pickled object whose reconstruction calls a function).
            There is deliberately no unsafe fallback.
        InputError: the file is missing or is not a readable PyTorch checkpoint (empty, cut short,
            corrupt).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found" if not path.exists() else "not a file")
    with _LOAD_WARNINGS_LOCK, warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                loaded = torch.load(path, map_location=map_location, weights_only=True)
        except MemoryError:
            raise
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpoint(
                path,
                f"refused: the file would run code on load ({_refusal_detail(str(e))}) "
                "— only plain tensors/containers are allowed",
            ) from None
        except Exception as e:  # noqa: BLE001 - a cut-short or corrupt file fails anywhere in torch or pickle
            raise InputError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    for warning in held:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


#: The run folder's record of checkpoints that would have run code on load (a JSON list).
SECURITY_EVENTS = "security_events.json"
#: ``nnunet_joint_reproduce``'s exit status when it finished but met such a checkpoint.
EXIT_SECURITY_EVENT = 3
_SECURITY_EVENTS_LOCK = threading.Lock()  # trainings run in threads (``--jobs``); one writer at a time


def security_events(run_root: str | os.PathLike) -> list[dict[str, Any]]:
    """The events recorded in ``run_root``'s :data:`SECURITY_EVENTS` (none when there is no file)."""
    path = Path(run_root) / SECURITY_EVENTS
    if not path.is_file():
        return []
    try:
        events = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable event list ({e})") from None
    if not isinstance(events, list):
        raise InputError(path, "not a readable event list (expected a JSON list)")
    return events


def set_aside_refused_checkpoint(path: str | os.PathLike, run_root: str | os.PathLike) -> tuple[Path, str] | None:
    """Move a checkpoint the safe loader refuses out of the way, keeping it as evidence.

    The file is renamed in its folder to ``<name>.refused-unsafe-<UTC time>`` (it would have run
    code on load) or ``<name>.refused-unreadable-<UTC time>`` (empty, cut short by a killed run,
    corrupt); its bytes are not touched and nothing is deleted. An unsafe one is also appended to
    ``run_root``'s :data:`SECURITY_EVENTS` with its SHA-256, because someone other than this
    program wrote it: the folder is not to be trusted blindly any more.

    Returns:
        Where the file went and why it was refused, or ``None`` when it loads (nothing is moved).
    """
    path = Path(path)
    try:
        safe_torch_load(path)
    except UnsafeCheckpoint as e:
        kind, problem = "unsafe", e.problem
    except InputError as e:
        kind, problem = "unreadable", e.problem
    else:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.refused-{kind}-{stamp}")
    n = 1
    while kept.exists():  # two refusals within a second: never overwrite earlier evidence
        n += 1
        kept = path.with_name(f"{path.name}.refused-{kind}-{stamp}-{n}")
    os.replace(path, kept)
    if kind == "unsafe":
        event = {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": str(path),
                 "kept_as": str(kept), "sha256": hashlib.sha256(kept.read_bytes()).hexdigest(),
                 "bytes": kept.stat().st_size, "problem": problem}
        with _SECURITY_EVENTS_LOCK:
            write_json(security_events(run_root) + [event], Path(run_root) / SECURITY_EVENTS)
    return kept, problem


def security_exit_code(run_root: str | os.PathLike, events_before: int) -> int:
    """0, or :data:`EXIT_SECURITY_EVENT` with a closing ``warning:`` line when this run recorded events.

    ``events_before`` is the number of events recorded before the run started (a resumed run's
    earlier events were reported by the run that met them).
    """
    new = security_events(run_root)[events_before:]
    if not new:
        return 0
    warn(Path(run_root) / SECURITY_EVENTS, f"{len(new)} checkpoint(s) would have run code on load and were refused, "
         f"kept as evidence ({', '.join(e['kept_as'] for e in new)}) and retrained; the run finished, exit status "
         f"{EXIT_SECURITY_EVENT}")
    return EXIT_SECURITY_EVENT


class _TorchLoadingSafely:
    """The ``torch`` module as nnU-Net's modules see it under :func:`nnunet_loads_safely`: ``torch.load``
    is :func:`safe_torch_load` (whatever ``weights_only`` the caller asks for); every other name is torch's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, **_ignored) -> Any:
        return safe_torch_load(f, map_location=map_location if map_location is not None else "cpu")


#: nnU-Net 2.8 modules that unpickle checkpoints with ``torch.load(weights_only=False)``.
NNUNET_CHECKPOINT_LOADERS = (
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",  # load_checkpoint: --c, --val
    "nnunetv2.inference.predict_from_raw_data",  # initialize_from_trained_model_folder
    "nnunetv2.run.load_pretrained_weights",  # -pretrained_weights
)


@contextlib.contextmanager
def nnunet_loads_safely() -> Iterator[None]:
    """While inside, nnU-Net's own checkpoint loaders go through :func:`safe_torch_load`.

    The one path every trainer we ship (resuming, validating) and ``nnunet_joint_predict`` (loading
    a model folder) load checkpoints by: nnU-Net's code runs unchanged, but the ``torch`` name in
    the modules of :data:`NNUNET_CHECKPOINT_LOADERS` is a stand-in whose ``load`` is the safe one.
    Scoped to those modules (the global ``torch.load`` is untouched) and restored on exit.
    """
    import importlib

    modules = [importlib.import_module(name) for name in NNUNET_CHECKPOINT_LOADERS]
    originals = [module.torch for module in modules]
    for module in modules:
        module.torch = _TorchLoadingSafely()
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.torch = original


def _strip_wrapper_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def unwrap_state_dict(obj: Any, where: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and strip DDP/torch.compile key prefixes.

    Accepts a bare state dict or one wrapped as ``{'network_weights': ...}`` (nnU-Net),
    ``{'state_dict': ...}`` or ``{'model': ...}`` (timm, Lightning, others), nested any depth.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in STATE_DICT_WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(where, "no state dict in the checkpoint (expected a dict of tensors, possibly under "
                                f"one of {list(STATE_DICT_WRAPPERS)})")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(where, f"not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[_strip_wrapper_prefixes(key)] = value
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a (safely loaded) ``.pth``/``.pt``/``.model`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(path, f"not a readable safetensors file ({e})") from None
    elif suffix in TORCH_SUFFIXES:
        obj = safe_torch_load(path)
    else:
        raise InputError(path, f"unknown weights format {suffix!r}; expected {SAFETENSORS_SUFFIX} or one of "
                               f"{', '.join(TORCH_SUFFIXES)}")
    return unwrap_state_dict(obj, path)


@dataclass
class LoadReport:
    """What a weight transfer did, key by key (written to the training log)."""

    loaded: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    missing_in_checkpoint: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors",
                 f"{len(self.skipped_head)} head tensors re-initialised",
                 f"{len(self.missing_in_checkpoint)} missing in checkpoint",
                 f"{len(self.shape_mismatch)} shape mismatches",
                 f"{len(self.unexpected)} unused checkpoint tensors"]
        text = ", ".join(parts)
        for name, keys in (("missing", self.missing_in_checkpoint), ("mismatched", self.shape_mismatch),
                           ("unused", self.unexpected)):
            if keys:
                text += f"; first {name}: {keys[0]}"
        return text


def compare_state_dicts(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                        skip_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Classify every key of ``target`` (the network) against ``source`` (the checkpoint)."""
    report = LoadReport()
    for key, tensor in target.items():
        if key.startswith(skip_prefixes):
            report.skipped_head.append(key)
        elif key not in source:
            report.missing_in_checkpoint.append(key)
        elif tuple(source[key].shape) != tuple(tensor.shape):
            report.shape_mismatch.append(key)
        else:
            report.loaded.append(key)
    report.unexpected = [k for k in source if k not in target]
    return report


def load_transfer_weights(network: nn.Module, path: str | os.PathLike,
                          skip_prefixes: tuple[str, ...] | None = None) -> LoadReport:
    """Initialise ``network`` from another task's checkpoint (LiTS init), heads excepted.

    Every key whose name and shape match is loaded except those starting with one of
    ``skip_prefixes`` (default: ``network.head_prefixes``), which keep their fresh
    initialisation. Checkpoint keys the network lacks (e.g. a decoder when the target is a
    classifier) are reported as unused.

    Raises:
        InputError: a non-head weight of the network is missing from the checkpoint or has
            another shape — the transfer must cover everything but the heads.
    """
    if skip_prefixes is None:
        skip_prefixes = tuple(getattr(network, "head_prefixes", ()))
    source = load_state_dict_file(path)
    target = network.state_dict()
    report = compare_state_dicts(target, source, tuple(skip_prefixes))
    if report.missing_in_checkpoint or report.shape_mismatch:
        if report.missing_in_checkpoint:
            key = report.missing_in_checkpoint[0]
            first = f"first missing: {key}"
        else:
            key = report.shape_mismatch[0]
            first = (f"first mismatch: {key} is {tuple(source[key].shape)} in the checkpoint but "
                     f"{tuple(target[key].shape)} in the network")
        raise InputError(path, f"does not fit the network: {len(report.missing_in_checkpoint)} non-head weights "
                               f"missing, {len(report.shape_mismatch)} with another shape ({first})")
    network.load_state_dict({k: source[k] for k in report.loaded}, strict=False)
    return report
