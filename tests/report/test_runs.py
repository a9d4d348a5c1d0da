"""Finding and reading runs: Lightning CSV folders and offline W&B runs (read back with wandb's own protobuf)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest

from lightning_mpc.report import NoRunError, find_run, load_run, read_csv_rows, read_records, read_wandb_run
from lightning_mpc.report.series import block_key, parse_block_key
from tests.report.conftest import STEPS, LoggedRun


def _write_csv(path: Path, rows: list[dict[str, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({key for row in rows for key in row})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_rows_of_one_step_are_merged(tmp_path: Path) -> None:
    # the telemetry's per-block row and Lightning's own row of the same step, as CSVLogger writes them
    path = _write_csv(
        tmp_path / "metrics.csv",
        [
            {"step": 1, "epoch": 0, "mpc/block_00/loss": 2.0},
            {"step": 1, "epoch": 0, "train_loss": 1.0},
            {"step": 0, "mpc/block_00/loss": 3.0},
        ],
    )
    assert read_csv_rows(path) == [
        {"step": 0.0, "mpc/block_00/loss": 3.0},
        {"step": 1.0, "epoch": 0.0, "mpc/block_00/loss": 2.0, "train_loss": 1.0},
    ]


def test_the_shallowest_then_newest_run_is_found(tmp_path: Path) -> None:
    fit = _write_csv(tmp_path / "lightning_logs" / "mlp" / "version_0" / "metrics.csv", [{"step": 0}])
    _write_csv(fit.parent / "test" / "metrics.csv", [{"step": 0}])  # validate/test files in the run folder
    newer = _write_csv(tmp_path / "lightning_logs" / "mlp" / "version_1" / "metrics.csv", [{"step": 0}])
    os.utime(fit, (1, 1))
    assert find_run(tmp_path) == newer
    assert find_run(fit.parent) == fit  # the version folder itself
    assert find_run(fit) == fit  # or the file


@pytest.mark.parametrize("case", ["empty", "missing", "other-file"])
def test_a_folder_without_a_run_says_what_to_pass(tmp_path: Path, case: str) -> None:
    target = {"empty": tmp_path, "missing": tmp_path / "nowhere", "other-file": tmp_path / "notes.txt"}[case]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NoRunError, match="HINT: pass a CSVLogger version folder"):
        find_run(target)


def test_wandb_and_csv_logs_of_one_run_read_the_same(logged_run: LoggedRun) -> None:
    (log,) = logged_run.wandb.glob("run-*.wandb")
    assert log.stat().st_size > 32 * 1024  # records cross the log's 32 KiB blocks: chunks are reassembled
    wandb_run = read_wandb_run(log)
    csv_rows = read_csv_rows(logged_run.csv / "metrics.csv")
    assert wandb_run.config["mpc"]["horizon"] == 2 and wandb_run.run_id and wandb_run.project
    assert len(wandb_run.config["mpc"]["partition"]) == logged_run.blocks

    def block_series(rows: list[dict[str, float]]) -> dict[tuple[float, str], float]:
        return {(row["step"], key): value for row in rows for key, value in row.items() if parse_block_key(key)}

    from_wandb, from_csv = block_series(wandb_run.rows), block_series(csv_rows)
    assert from_csv and set(from_wandb) == set(from_csv)
    for key, value in from_csv.items():
        assert math.isclose(from_wandb[key], value, rel_tol=1e-6), key
    steps = {step for step, _ in from_csv}
    assert len(steps) == STEPS
    assert any(key == block_key("mpc", 0, "alignment") for _, key in from_csv)


def test_every_record_is_a_wandb_record(logged_run: LoggedRun) -> None:
    (log,) = logged_run.wandb.glob("run-*.wandb")
    kinds = [record.WhichOneof("record_type") for record in read_records(log)]
    assert kinds[0] == "header" and "run" in kinds and kinds.count("history") >= STEPS and kinds[-1] == "exit"


def test_a_file_that_is_not_a_wandb_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a log")
    with pytest.raises(ValueError, match="not a W&B run log"):
        list(read_records(path))


def test_a_corrupt_chunk_is_refused(logged_run: LoggedRun, tmp_path: Path) -> None:
    (log,) = logged_run.wandb.glob("run-*.wandb")
    data = bytearray(log.read_bytes())
    data[200] ^= 0xFF  # inside the first records
    broken = tmp_path / log.name
    broken.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        list(read_records(broken))


def test_load_run_reads_either_kind(logged_run: LoggedRun) -> None:
    csv_run, wandb_run = load_run(logged_run.csv), load_run(logged_run.wandb)
    assert (csv_run.kind, wandb_run.kind) == ("csv", "wandb")
    assert csv_run.prefixes == wandb_run.prefixes == ["mpc"]
    assert wandb_run.folder == logged_run.wandb and csv_run.folder == logged_run.csv
    assert load_run(logged_run.wandb.parent.parent).kind in ("csv", "wandb")  # a folder above both
