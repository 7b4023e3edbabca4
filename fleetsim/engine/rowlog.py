"""Rows a worker writes to a Parquet file in batches as it goes: one per message published, acknowledged or
received, which a long run has too many of to hold until its end.

Why: 10,000 devices and 22 subscribers for 10 minutes are millions of rows; kept in lists they would grow a
worker by hundreds of MB and be pickled back to the orchestrator in one piece. Here at most ``batch`` rows are
held (~100 B each), then written as one row group. The orchestrator reads the files when the run is over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BATCH = 20_000  # rows held before a row group is written: a few MB at most


class RowLog:
    """Append-only rows with a fixed schema, written to ``path`` every ``batch`` rows and at :meth:`close`."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = BATCH) -> None:
        self.path, self.schema, self.batch = path, schema, batch
        self._cols: list[list[Any]] = [[] for _ in schema.names]
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0  # written or held
        self.closed = False
        self.late = 0  # rows offered after close: counted, never written (a new writer would truncate the file)

    def append(self, *row: Any) -> None:
        if self.closed:
            self.late += 1
            return
        for col, value in zip(self._cols, row, strict=True):
            col.append(value)
        self.rows += 1
        if len(self._cols[0]) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._cols[0] and self._writer is not None:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema)
        self._writer.write_table(pa.table(dict(zip(self.schema.names, self._cols, strict=True)), schema=self.schema))
        self._cols = [[] for _ in self.schema.names]

    def close(self) -> None:
        """Write what is held and close the file (an empty file with the schema when nothing was logged)."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None


PUBLISHED = pa.schema([("device", pa.string()), ("seq", pa.int64()), ("kind", pa.string()), ("qos", pa.int8()),
                       ("topic", pa.string()), ("published_at", pa.int64())])
ACKED = pa.schema([("device", pa.string()), ("seq", pa.int64())])
RECEIVED = pa.schema([("subscriber", pa.string()), ("device", pa.string()), ("seq", pa.int64()),
                      ("kind", pa.string()), ("qos", pa.int8()), ("published_at", pa.int64()),
                      ("received_at", pa.int64()), ("duplicate", pa.bool_())])
SUBSCRIBED = pa.schema([("subscriber", pa.string()), ("subscribed_at", pa.int64()), ("ended_at", pa.int64())])
