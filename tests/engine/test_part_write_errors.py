"""A part that cannot be written (a full disk) fails with an error naming the table, the file and the cause."""

from __future__ import annotations

import errno
import pickle

import pyarrow as pa
import pytest

from tunelake.engine import parts
from tunelake.engine.parts import PartWriteError, write_arrow, write_part


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("writer", "module", "function", "suffix"),
    [(write_part, parts.pq, "write_table", ".parquet"), (write_arrow, parts.pa.ipc, "new_file", ".arrow")],
)
def test_a_full_disk_names_the_table_and_file_being_written(tmp_path, monkeypatch, writer, module, function, suffix):
    monkeypatch.setattr(module, function, disk_full)
    with pytest.raises(PartWriteError) as raised:
        writer(tmp_path, "silver/records", "part-r-01-0000001.parquet", pa.table({"id": ["a"]}))
    error = raised.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    path = tmp_path / "silver/records" / f"part-r-01-0000001{suffix}"
    assert str(error) == f"[Errno 28] cannot write a part of table silver/records to {path}: No space left on device"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # it comes back whole from a worker process
