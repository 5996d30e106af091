"""Rows of a Hugging Face `datasets` folder or an Arrow file as JSON lines, for `data prepare` (src/data/internal/arrow.ts).

`python -m weitiao_engine.arrow_rows PATH`. PATH is a `save_to_disk` folder (state.json lists its
data-*.arrow shards, Arrow IPC stream format) or one .arrow file (stream or file format). Prints
{"columns": [...]} and then one JSON array of values per row, in column order; on failure
{"error": "..."} and exit status 1. Only pyarrow is needed (not `datasets`); rows go out a batch at a
time, so a large dataset is never held whole. Not an engine command: no torch, no protocol events.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import sys
from pathlib import Path


def _default(value):
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _shards(path: Path) -> list[Path]:
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            raise ValueError(
                f"{path} holds several splits ({', '.join(splits)}); give one split's folder, e.g. {path / (splits[0] if splits else 'train')}"
                " / 该目录包含多个划分，请指定其中一个子目录"
            )
        state = path / "state.json"
        if not state.exists():
            raise ValueError(f"{path} is not a datasets folder (no state.json) / 不是 datasets 保存的目录（缺少 state.json）")
        files = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])]
        if not files:
            raise ValueError(f"{path}/state.json lists no data files / state.json 未列出数据文件")
        return [path / f for f in files]
    return [path]


def _batches(file: Path):
    import pyarrow as pa

    source = pa.memory_map(str(file), "r")
    try:
        reader = pa.ipc.open_stream(source)  # what datasets writes
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader.schema, iter(reader)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m weitiao_engine.arrow_rows PATH", file=sys.stderr)
        return 2
    out = sys.stdout
    try:
        shards = _shards(Path(argv[0]))
        columns: list[str] | None = None
        for shard in shards:
            schema, batches = _batches(shard)
            if columns is None:
                columns = list(schema.names)
                out.write(json.dumps({"columns": columns}, ensure_ascii=False) + "\n")
            elif list(schema.names) != columns:
                raise ValueError(f"{shard.name} has columns {schema.names}, the first shard {columns} / 各分片的列不一致")
            for batch in batches:
                for row in batch.to_pylist():
                    out.write(json.dumps([row[c] for c in columns], ensure_ascii=False, default=_default) + "\n")
    except Exception as err:  # noqa: BLE001 -- any failure is reported as one line for the caller
        out.write(json.dumps({"error": f"{type(err).__name__}: {err}"}, ensure_ascii=False) + "\n")
        out.flush()
        return 1
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
