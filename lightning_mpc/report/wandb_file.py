"""Read an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``) without the network.

The ``.wandb`` file is W&B's transaction log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version) and
then LevelDB-style log blocks of 32 KiB, each record framed by a CRC-32, a length and a chunk type
(full, first, middle, last). Each record is one ``wandb.proto.wandb_internal_pb2.Record`` message, which
W&B's own protobuf classes parse. (wandb 0.31 ships no Python reader for these files any more: the log
is read by its Go core, which offers no offline query; ``wandb sync`` uploads it.) Only the framing is
done here; every message is decoded by wandb.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_mpc.report.series import STEP, merge_rows

__all__ = ["WandbRun", "read_records", "read_wandb_run"]

_IDENT = b":W&B"
_HEADER_BYTES = 7
_BLOCK_BYTES = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32, length, chunk type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_GLOBAL_STEP = "trainer/global_step"
"""Lightning's ``WandbLogger`` writes the global step under this key in every history row."""


def read_records(path: str | Path) -> Iterator[Any]:
    """Yield every record of a ``.wandb`` file as a ``wandb_internal_pb2.Record``.

    Args:
        path: the ``run-<id>.wandb`` file.

    Raises:
        ValueError: if the file is not a W&B transaction log or a chunk is corrupt (bad CRC).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[: len(_IDENT)] != _IDENT:
        raise ValueError(
            f"{path} is not a W&B run log (it does not start with {_IDENT!r}). "
            "HINT: pass the run folder wandb/offline-run-<date>-<id> or its run-<id>.wandb file."
        )
    position = _HEADER_BYTES
    pending: list[bytes] = []
    while position + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK_BYTES - position % _BLOCK_BYTES
        if left < _CHUNK_HEADER.size:  # the block's trailer is padding
            position += left
            continue
        checksum, length, kind = _CHUNK_HEADER.unpack_from(data, position)
        start = position + _CHUNK_HEADER.size
        body = data[start : start + length]
        position = start + length
        if kind == 0 and length == 0:  # zero padding (preallocated or unfinished log)
            continue
        if len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) != checksum:
            if len(body) < length or position >= len(data):
                break  # a log cut off while being written: keep what was complete
            raise ValueError(
                f"{path}: corrupt chunk at byte {position - length - _CHUNK_HEADER.size} (CRC mismatch). "
                "HINT: the file was damaged; W&B's own `wandb sync` will reject it too."
            )
        if kind == _FULL:
            pending = [body]
        elif kind == _FIRST:
            pending = [body]
            continue
        elif kind == _MIDDLE:
            pending.append(body)
            continue
        elif kind == _LAST:
            pending.append(body)
        else:
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(b"".join(pending))
        pending = []
        yield record


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _number(value_json: str) -> float | None:
    try:
        value = json.loads(value_json)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class WandbRun:
    """What an offline W&B run holds: its history rows, its config and its identity.

    Attributes:
        rows: history rows merged per step; ``step`` is Lightning's global step (``trainer/global_step``),
            W&B's ``_step`` for rows that have none.
        config: the run config (``{"mpc": {"horizon": 2, ...}, ...}``).
        run_id: the run's id.
        name: the run's display name, ``""`` offline when none was given.
        project: the project the run would sync to.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    name: str = ""
    project: str = ""


def read_wandb_run(path: str | Path) -> WandbRun:
    """Read the history, config and identity of a ``.wandb`` file.

    Args:
        path: the ``run-<id>.wandb`` file.
    """
    run = WandbRun()
    rows: list[dict[str, float]] = []
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                value = _number(item.value_json)
                if value is not None:
                    row[_item_key(item)] = value
            step = row.get(_GLOBAL_STEP, row.get("_step"))
            if step is not None:
                rows.append({**row, STEP: step})
        elif kind == "config":
            for item in record.config.update:
                try:
                    run.config[_item_key(item)] = json.loads(item.value_json)
                except ValueError:
                    continue
            for item in record.config.remove:
                run.config.pop(_item_key(item), None)
        elif kind == "run":
            run.run_id = record.run.run_id or run.run_id
            run.name = record.run.display_name or run.name
            run.project = record.run.project or run.project
    run.rows = merge_rows(rows)
    return run
