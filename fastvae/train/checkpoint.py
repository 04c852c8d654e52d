"""Run directories and checkpoints, written atomically.

A run directory holds:

``checkpoint.safetensors``
    One safetensors file with everything a resumed run needs. Tensors: ``model.<name>`` for every
    entry of the model's ``state_dict()`` (parameters and persistent buffers), and
    ``optimizer.<opt>.<param index>.<key>`` for every tensor of each optimiser's ``state_dict()``
    (``opt`` is ``generator`` or ``discriminator``; Adam's ``exp_avg``, ``exp_avg_sq`` and ``step``).
    String metadata: ``format`` (:data:`FORMAT`), ``optimizers`` (JSON: each optimiser's
    ``state_dict()`` with every tensor replaced by ``{"__tensor__": "<key>"}``, so ``param_groups``
    and other plain values live here) and ``run`` (JSON: the run record below).
``config.json``
    The run record, for people and tools: ``format``, ``step`` (optimiser steps done), ``model``
    (``model.config``: name, input_shape, latent_dim, hparams), ``train`` (the training arguments),
    ``world_size``, ``rng`` (per rank, the torch / CUDA / numpy / Python generator states at
    ``step``), ``scaler`` (the mixed-precision loss scaler's state), ``elapsed`` (training seconds so
    far) and ``weights_sha256`` (per rank, :func:`state_digest` of its model state: equal on every
    rank of a healthy data-parallel run).

``metrics.jsonl``, ``samples_<step>.png``, ``recon_<step>.png``
    The training outputs (:mod:`fastvae.train.trainer`); ``eval.json`` and ``samples.png`` are
    written by ``fastvae evaluate`` and ``fastvae sample``. These are :data:`RUN_FILES`.

Every file is written to a temporary name in the same directory, flushed to disk and moved into
place with ``os.replace``, so an interrupt leaves either the old file or the new one, never a torn
one; each gets the mode a newly created file gets (``0o666`` less the umask). The checkpoint is
written first and is authoritative: it carries its own copy of the run record. A file that is
truncated, corrupt or not fastvae's is reported by :class:`RunFileError`, naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save, save_file

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "EVAL_NAME",
    "FORMAT",
    "METRICS_NAME",
    "RUN_FILES",
    "Checkpoint",
    "RunFileError",
    "atomic_write",
    "capture_rng",
    "clear_run",
    "load_checkpoint",
    "read_config",
    "read_run_record",
    "restore_rng",
    "rng_from_json",
    "rng_to_json",
    "save_checkpoint",
    "state_digest",
    "write_json",
]

FORMAT = "fastvae-run/1"
CHECKPOINT_NAME = "checkpoint.safetensors"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
EVAL_NAME = "eval.json"
#: Glob patterns of the files fastvae writes in a run directory (all that ``--overwrite`` removes).
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, EVAL_NAME, "samples.png", "samples_*.png", "recon_*.png")
_MODEL_PREFIX = "model."
_OPTIMIZER_PREFIX = "optimizer."
_TENSOR_REF = "__tensor__"


class RunFileError(ValueError):
    """A run-directory file that cannot be read: truncated, corrupt, or not written by fastvae. The
    message is one line that names the file and says what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path}: {problem}; restore it from a copy, or train the run again (fastvae train --overwrite)"
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model_state: the model's ``state_dict()`` (CPU tensors).
        optimizers: each optimiser's ``state_dict()`` by name (CPU tensors).
        run: the run record (see the module docstring).
    """

    model_state: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    run: dict[str, Any]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to produce a temporary file next to ``path``, flush it to disk, then move
    it onto ``path`` with ``os.replace`` (atomic on POSIX and Windows). The temporary file is removed
    if ``write`` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb"):
            pass
        mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file; writers such as safetensors narrow it
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def clear_run(run_dir: Path) -> None:
    """Delete the files fastvae writes in ``run_dir`` (:data:`RUN_FILES`: checkpoint, config, metrics,
    evaluation, image grids), leaving anything else there alone."""
    for pattern in RUN_FILES:
        for path in Path(run_dir).glob(pattern):
            path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (see :func:`atomic_write`)."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` with each tensor moved into ``tensors`` under a key from ``prefix`` and replaced by a
    ``{"__tensor__": key}`` reference; tuples become lists and int dict keys strings (JSON)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR_REF: prefix}
    if isinstance(obj, dict):
        return {str(key): _flatten(value, f"{prefix}.{key}", tensors) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(value, f"{prefix}.{i}", tensors) for i, value in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            return tensors[obj[_TENSOR_REF]]
        return {key: _unflatten(value, tensors) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(value, tensors) for value in obj]
    return obj


def _optimizer_state(index: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An optimiser ``state_dict`` from its JSON index: per-parameter state keys back to ints."""
    state = _unflatten(index, tensors)
    state["state"] = {int(key): value for key, value in state["state"].items()}
    return state


def save_checkpoint(
    path: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizers: dict[str, dict[str, Any]],
    run: dict[str, Any],
) -> None:
    """Write a checkpoint (format in the module docstring) to ``path`` atomically.

    Args:
        model_state: the model's ``state_dict()``; tensors on any device (copied to the CPU).
        optimizers: each optimiser's ``state_dict()`` by name.
        run: the run record, JSON-serialisable.
    """
    tensors = {_MODEL_PREFIX + key: value.detach().to("cpu", copy=True).contiguous() for key, value in model_state.items()}
    index = {name: _flatten(state, f"{_OPTIMIZER_PREFIX}{name}", tensors) for name, state in optimizers.items()}
    metadata = {"format": FORMAT, "optimizers": json.dumps(index), "run": json.dumps(run)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _json_field(path: Path, metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise RunFileError(path, f"the checkpoint's {key!r} metadata is missing or not JSON") from None


def _metadata(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise RunFileError(path, f"not a readable checkpoint, truncated or corrupt ({error})") from None
    if metadata.get("format") != FORMAT:
        raise RunFileError(path, f"not a fastvae checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def read_run_record(path: Path) -> dict[str, Any]:
    """The run record stored inside the checkpoint at ``path`` (no tensors are read).

    Raises:
        FileNotFoundError: no file at ``path``.
        RunFileError: the file is truncated, corrupt or not a fastvae checkpoint.
    """
    path = Path(path)
    return _json_field(path, _metadata(path), "run")


def read_config(path: Path) -> dict[str, Any]:
    """The run record in a run's ``config.json`` at ``path``.

    Raises:
        FileNotFoundError: no file at ``path``.
        RunFileError: the file is not JSON (truncated or corrupt) or not a fastvae run record (its
            ``format`` is not :data:`FORMAT`).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(path, f"not readable JSON, truncated or corrupt ({error})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RunFileError(path, f"not a fastvae run record (format {found!r}, expected {FORMAT!r})")
    return record


def load_checkpoint(path: Path, *, optimizers: bool = True) -> Checkpoint:
    """Read the checkpoint at ``path`` (CPU tensors); ``optimizers=False`` skips the optimiser state.

    Raises:
        FileNotFoundError: no file at ``path``.
        RunFileError: the file is truncated, corrupt or not a fastvae checkpoint.
    """
    path = Path(path)
    metadata = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise RunFileError(path, f"not a readable checkpoint, truncated or corrupt ({error})") from None
    model_state = {key[len(_MODEL_PREFIX) :]: value for key, value in tensors.items() if key.startswith(_MODEL_PREFIX)}
    states: dict[str, dict[str, Any]] = {}
    if optimizers:
        index = _json_field(path, metadata, "optimizers")
        states = {name: _optimizer_state(entry, tensors) for name, entry in index.items()}
    return Checkpoint(model_state=model_state, optimizers=states, run=_json_field(path, metadata, "run"))


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a ``state_dict``'s names, dtypes, shapes and bytes: equal states, equal digests."""
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}
    return hashlib.sha256(save(tensors)).hexdigest()


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(bytes(state.tolist())).decode("ascii")


def _decode(text: str) -> torch.Tensor:
    return torch.tensor(list(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random-generator states (cheap: taken before every training step).

    Returns:
        ``{"torch": ByteTensor, "python": random.getstate()}``, plus ``"cuda"`` (the generator of a
        CUDA ``device``) and ``"numpy"`` (the legacy global generator) when they apply;
        :func:`rng_to_json` makes it JSON.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy
    except ImportError:
        return state
    state["numpy"] = numpy.random.get_state()
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set the generators to :func:`capture_rng`'s ``state``."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`capture_rng`'s state as JSON: byte states in base64, tuples as lists."""
    version, internal, gauss = state["python"]
    out: dict[str, Any] = {"torch": _encode(state["torch"]), "python": [version, list(internal), gauss]}
    if "cuda" in state:
        out["cuda"] = _encode(state["cuda"])
    if "numpy" in state:
        name, keys, position, has_gauss, cached = state["numpy"]
        out["numpy"] = [name, [int(k) for k in keys], int(position), int(has_gauss), float(cached)]
    return out


def rng_from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`rng_to_json` (a numpy state is dropped when numpy is not installed)."""
    version, internal, gauss = obj["python"]
    state: dict[str, Any] = {"torch": _decode(obj["torch"]), "python": (version, tuple(internal), gauss)}
    if "cuda" in obj:
        state["cuda"] = _decode(obj["cuda"])
    if "numpy" in obj:
        try:
            import numpy
        except ImportError:
            return state
        name, keys, position, has_gauss, cached = obj["numpy"]
        state["numpy"] = (name, numpy.asarray(keys, dtype=numpy.uint32), position, has_gauss, cached)
    return state
