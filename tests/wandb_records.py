"""Reads back what an offline W&B run recorded: the records of its run-<id>.wandb file.

The file is a LevelDB-style log (wandb's own format since 0.10): a 7-byte header (":W&B", magic, version),
then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: full/first/middle/last) and a
protobuf ``Record`` split across chunks. wandb 0.2x no longer ships a Python reader, so this is one.
"""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FILE_HEADER, CHUNK_HEADER = 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    found, pending, pos = [], b"", FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # the tail of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def of_type(run_file: Path, kind: str) -> list:
    return [getattr(r, kind) for r in records(run_file) if r.WhichOneof("record_type") == kind]
