"""The lab's checkpoint files: written atomically, verified on load, the last two kept.

A checkpoint file is one header line ``ENTROLAB-CHECKPOINT 1 sha256=<hex> bytes=<n>`` followed by the
``torch.save`` payload.  :func:`write_checkpoint` writes a temporary file in the same directory, fsyncs it and
renames it over the target, after renaming the target to ``<name>.prev`` (so a kill at any point leaves at least one
complete checkpoint).  :func:`read_checkpoint` checks the length and the checksum before unpickling anything
(``weights_only=True``), so a truncated, empty, random or bit-flipped file is reported with its path and why, never
loaded.  :func:`latest_good` picks the newest verified checkpoint that a run's metrics file can continue from.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "latest_good",
    "previous_path",
    "read_checkpoint",
    "resume_point",
    "write_checkpoint",
]

_MAGIC = b"ENTROLAB-CHECKPOINT 1 "
_MAX_HEADER = 200


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: its message names the file and what is wrong with it."""


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept."""
    return path.with_name(path.name + ".prev")


def write_checkpoint(obj: Any, path: Path, *, keep_previous: bool = True) -> None:
    """``torch.save(obj)`` with a checksum header, atomically; the file it replaces becomes :func:`previous_path`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = _MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload)}\n".encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only directory: say where, leave no temporary file behind
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"could not write the checkpoint {path}: {exc.strerror}") from None


def read_checkpoint(path: Path) -> Any:
    """The object in a checkpoint file, after checking its header, length and checksum; :class:`CheckpointError`
    naming ``path`` when any check fails or the payload does not load."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}") from None
    if data.startswith(b"PK\x03\x04"):  # a plain torch.save file of an earlier release: loads, unverified
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint {path} is damaged: {exc}") from None
    end = data.find(b"\n", 0, _MAX_HEADER)
    if not data.startswith(_MAGIC) or end < 0:
        why = "it is empty" if not data else "it has no entrolab checkpoint header (truncated or not a checkpoint)"
        raise CheckpointError(f"checkpoint {path} is damaged: {why}")
    try:
        fields = dict(part.split("=", 1) for part in data[len(_MAGIC) : end].decode("ascii").split())
        digest, size = fields["sha256"], int(fields["bytes"])
    except (ValueError, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} is damaged: unreadable header") from None
    payload = data[end + 1 :]
    if len(payload) != size:
        raise CheckpointError(f"checkpoint {path} is damaged: {len(payload)} bytes of payload, expected {size}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is damaged: its checksum does not match its content")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # verified bytes that still do not load: a different torch, say so
        raise CheckpointError(f"checkpoint {path} does not load: {exc}") from None


def latest_good(
    path: Path, *, usable: Callable[[Any], str | None], say: Callable[[str], None]
) -> tuple[Any, Path] | None:
    """The newest of ``path`` and its previous checkpoint that verifies and that ``usable`` accepts (``usable``
    returns ``None`` for a good state, else why it cannot be continued).  Every rejected file is reported through
    ``say``.  ``None`` when neither file exists; :class:`CheckpointError` listing the reasons when files exist but
    none can be used."""
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = read_checkpoint(candidate)
        except CheckpointError as exc:
            problems.append(str(exc))
            say(f"{exc}; trying the one before")
            continue
        why = usable(state)
        if why is None:
            return state, candidate
        problems.append(f"checkpoint {candidate}: {why}")
        say(f"checkpoint {candidate}: {why}; trying the one before")
    if problems:
        raise CheckpointError("cannot resume: " + "; ".join(problems))
    return None


def resume_point(ckpt: Path, metrics: Path, *, steps: int, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The state to resume a lab run from: the newest verified checkpoint (``ckpt`` or the one before) that its
    metrics file can continue from (at least as many complete rows as it counts, a step within ``steps``); ``None``
    to start the run over (no checkpoint yet); :class:`CheckpointError` when checkpoints exist but none works."""
    rows = 0
    if metrics.exists():  # complete rows only: a kill mid-write leaves a partial last line
        rows = sum(1 for line in metrics.read_text(errors="replace").splitlines() if line.strip().endswith("}"))

    def usable(state: Any) -> str | None:
        if not isinstance(state, dict) or "metric_rows" not in state or "step" not in state:
            return "it is not a lab run checkpoint"
        if int(state["step"]) > steps:
            return f"it is at step {state['step']}, beyond this run's {steps} steps"
        if int(state["metric_rows"]) > rows:
            return f"it continues after metric row {state['metric_rows']}, but {metrics} has only {rows} complete rows"
        return None

    found = latest_good(ckpt, usable=usable, say=say)
    return None if found is None else found[0]
