"""A worker's message logs: written in batches, read back whole (fleetsim.engine.rowlog)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from fleetsim.engine.rowlog import ACKED, RowLog


def test_rows_are_written_in_batches_and_all_read_back(tmp_path: Path) -> None:
    log = RowLog(tmp_path / "acked-0.parquet", ACKED, batch=4)
    for seq in range(10):
        log.append("dev-1", seq)
    assert (tmp_path / "acked-0.parquet").stat().st_size > 0  # two batches out already, before the end
    log.close()
    table = pq.read_table(tmp_path / "acked-0.parquet")
    assert table.schema == ACKED and table.column("seq").to_pylist() == list(range(10))
    assert pq.ParquetFile(tmp_path / "acked-0.parquet").num_row_groups == 3  # 4 + 4 + 2: at most 4 held
    log.append("dev-1", 10)  # after close: counted, and the file is not written again
    log.close()
    assert log.late == 1 and pq.read_table(tmp_path / "acked-0.parquet").num_rows == 10


def test_an_empty_log_is_a_file_with_its_schema(tmp_path: Path) -> None:
    log = RowLog(tmp_path / "sub" / "acked-1.parquet", ACKED)
    log.close()
    table = pq.read_table(tmp_path / "sub" / "acked-1.parquet")
    assert table.num_rows == 0 and table.schema == ACKED
