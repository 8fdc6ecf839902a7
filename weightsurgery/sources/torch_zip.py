"""The zip files ``torch.save`` writes, opened lazily, checked, and read without a memory map.

:class:`TorchZip` checks the container before anything is unpickled: the zip
directory parses, every record lies inside the file, no two records overlap,
every record is stored uncompressed (as ``torch.save``
writes them; this also rules out zip bombs), and the pickle (``data.pkl``) passes
its CRC-32 and :func:`~weightsurgery.sources.pickle_scan.scan_pickle`. The
pickle is then run by torch's own weights-only unpickler, with every storage on
the meta device, so opening reads no tensor data. Each storage the pickle
declares is checked against its record: a storage declared larger or smaller
than its record is refused (torch's ``mmap=True`` does not check this, and such
a weight would read the zip's own headers).

:meth:`TorchZip.materialize` reads a tensor's storage with ``pread`` into memory
it owns and, for files up to :data:`VERIFY_CRC_MAX_BYTES`, checks the record's
CRC-32 (torch checks none). A file truncated after it was opened raises
:class:`~weightsurgery.errors.CorruptCheckpointError` instead of SIGBUS.

A pickle that cannot be rebuilt on the meta device (quantized tensors) is
loaded whole by ``torch.load`` after the same checks; :attr:`TorchZip.eager`
says so.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources._fileread import pread_into
from weightsurgery.sources.pickle_scan import scan_pickle

__all__ = ["VERIFY_CRC_MAX_BYTES", "TorchZip"]

logger = logging.getLogger(__name__)

VERIFY_CRC_MAX_BYTES = 16 << 30
"""Files up to this size have the CRC-32 of every storage record checked as it is read."""

_LOCAL_HEADER = struct.Struct("<4s22xHH")
_ENCRYPTED = 0x41  # general-purpose flag bits: encrypted, strongly encrypted
_END_RECORD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_FIX = "re-download it or re-save it with torch.save"
# What zipfile raises on a malformed directory.
_BAD_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error, EOFError, NotImplementedError,
            KeyError, IndexError, OverflowError, UnicodeDecodeError)  # fmt: skip


@dataclass(frozen=True)
class _Record:
    name: str
    offset: int  # of its data, in the file
    size: int
    crc: int


class TorchZip:
    """An open ``torch.save`` zip file: its checked records, its unpickled structure, lazy reads.

    Args:
        path: the file.
        weights_only: unpickle with torch's weights-only unpickler; ``False``
            runs ``torch.load`` with ``weights_only=False``, eagerly.
        lazy: keep the tensors on the meta device until :meth:`materialize`;
            ``False`` loads them all now (after the same checks).

    Attributes:
        obj: what the file holds; its tensors are on the meta device until materialized.
        eager: the tensors were loaded whole into memory (see the module docstring).
        bytes_read: storage bytes read so far.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"w": torch.arange(3.0)}, p)
        >>> archive = TorchZip(p, weights_only=True)
        >>> archive.obj["w"].device.type, archive.materialize(archive.obj["w"]).tolist()
        ('meta', [0.0, 1.0, 2.0])
        >>> archive.close()
    """

    def __init__(self, path: Path, *, weights_only: bool, lazy: bool = True) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.bytes_read = 0
        self.eager = False
        self._storages: dict[int, tuple[_Record, torch.dtype]] = {}
        self._by_key: dict[object, torch.storage.TypedStorage] = {}
        self._last: tuple[str, torch.UntypedStorage] | None = None
        try:
            self.size = os.fstat(self.fd).st_size
            self.verify_crc = self.size <= VERIFY_CRC_MAX_BYTES
            self._records, pkl, self._swap = self._directory()
            if weights_only:
                scan_pickle(pkl, source=self.path)
            self.obj = self._unpickle(pkl) if weights_only and lazy else self._load_eagerly(weights_only=weights_only)
        except BaseException:
            self.close()
            raise

    def _directory(self) -> tuple[dict[str, _Record], bytes, bool]:
        self._check_end_record()
        try:  # torch's own reader checks the directory as torch.load would (it reads no tensor data)
            torch._C.PyTorchFileReader(str(self.path))
        except RuntimeError as exc:
            raise self._corrupt(str(exc).split(". This is an internal")[0].splitlines()[0][:200]) from exc
        with os.fdopen(os.dup(self.fd), "rb") as fh:
            try:
                with zipfile.ZipFile(fh) as zf:
                    infos = zf.infolist()
                    if not infos:
                        raise self._corrupt("it is an empty zip")
                    prefix = infos[0].filename.split("/", 1)[0] + "/"
                    records = self._records_of(fh, infos, prefix)
                    if "data.pkl" not in records:
                        raise self._corrupt(f"it has no record {prefix}data.pkl, so torch.save did not write it")
                    small = {  # every record but the storages: zipfile checks each one's CRC as it reads it
                        name: zf.read(record.name) for name, record in records.items() if not name.startswith("data/")
                    }
                    pkl = small["data.pkl"]
                    order = small.get("byteorder", b"little")
            except CorruptCheckpointError:
                raise
            except _BAD_ZIP as exc:
                raise self._corrupt(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if order not in (b"little", b"big"):
            raise self._corrupt(f"its byteorder record says {order[:20]!r}")
        return records, pkl, order.decode() != sys.byteorder

    def _check_end_record(self) -> None:
        """The end-of-directory record describes one whole archive (torch's reader refuses any other)."""
        tail = os.pread(self.fd, 1 << 16 | 22, max(0, self.size - (1 << 16 | 22)))
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _END_RECORD.size:
            raise self._corrupt("it has no zip end-of-directory record")
        disk, disk_dir, entries_here, entries, _, _, comment = _END_RECORD.unpack_from(tail, at)[1:]
        sound = disk == disk_dir and disk in (0, 0xFFFF) and entries_here == entries and at + 22 + comment == len(tail)
        locator = at - _ZIP64_LOCATOR.size
        if sound and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
            _, disk64, offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator)
            record = os.pread(self.fd, _ZIP64_END.size, offset)
            fields = _ZIP64_END.unpack(record) if len(record) == _ZIP64_END.size else (b"",) + (1,) * 9
            sound = disk64 == 0 and disks == 1 and fields[0] == b"PK\x06\x06" and fields[4:6] == (0, 0) and (
                fields[6] == fields[7]
            )
        if not sound:
            raise self._corrupt("its zip end-of-directory record is damaged (disk numbers, counts or length)")

    def _records_of(self, fh: Any, infos: list[zipfile.ZipInfo], prefix: str) -> dict[str, _Record]:
        records: dict[str, _Record] = {}
        end = 0
        for info in sorted(infos, key=lambda i: i.header_offset):
            if not info.filename.startswith(prefix):
                raise self._corrupt(f"record {info.filename} is not in the archive's folder {prefix}")
            fh.seek(info.header_offset)
            head = fh.read(_LOCAL_HEADER.size)
            if len(head) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(head)[0] != b"PK\x03\x04":
                raise self._corrupt(f"record {info.filename} has no local header at byte {info.header_offset}")
            name_len, extra_len = _LOCAL_HEADER.unpack(head)[1:]
            offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            if info.header_offset < end:
                raise self._corrupt(f"record {info.filename} overlaps the record before it")
            end = offset + info.compress_size
            if end > self.size:
                raise self._corrupt(f"record {info.filename} ends at byte {end} of a {self.size}-byte file")
            if info.flag_bits & _ENCRYPTED:
                raise self._corrupt(f"record {info.filename} is marked encrypted")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise self._corrupt(f"record {info.filename} is compressed, and torch.save stores every record as is")
            records[info.filename[len(prefix):]] = _Record(info.filename, offset, info.file_size, info.CRC)
        return records

    def _unpickle(self, pkl: bytes) -> object:
        unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(pkl), encoding="utf-8")
        unpickler.persistent_load = self._persistent_load  # type: ignore[method-assign]
        sparse = torch._utils._sparse_tensors_to_validate
        try:
            obj = unpickler.load()
        except NotImplementedError:  # a tensor the meta device cannot rebuild (quantized)
            logger.debug("%s holds tensors the meta device cannot rebuild; loading it whole", self.path)
            sparse.clear()
            return self._load_eagerly(weights_only=True)
        if sparse:  # sparse tensors are validated against their data: load the file whole
            sparse.clear()
            return self._load_eagerly(weights_only=True)
        return obj

    def _persistent_load(self, saved_id: object) -> torch.storage.TypedStorage:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"persistent id {str(saved_id)[:80]} is not a storage")
        _, storage_type, key, _, numel = saved_id
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r} has type {storage_type} and {numel!r} elements")
        record = self._records.get(f"data/{key}")
        nbytes = numel * dtype.itemsize
        if record is None:
            raise self._corrupt(f"its pickle names storage {key!r}, which has no record data/{key}")
        if record.size != nbytes:
            raise self._corrupt(f"storage {key!r} declares {numel} x {dtype} = {nbytes} bytes but its record "
                                f"{record.name} holds {record.size}")  # fmt: skip
        if key not in self._by_key:  # one storage per record, so views of it stay views of one storage
            storage = torch.UntypedStorage(nbytes, device="meta")
            self._storages[storage._cdata] = (record, dtype)
            self._by_key[key] = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
        return self._by_key[key]

    def _load_eagerly(self, *, weights_only: bool) -> object:
        self.eager = True
        if self.verify_crc:
            for record in self._records.values():
                if record.name.split("/", 1)[-1].startswith("data/"):
                    self._read(record, torch.uint8)
        return torch.load(self.path, map_location="cpu", weights_only=weights_only, mmap=False)

    def materialize(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor with its data: a meta tensor of this file is read (``pread``) into memory it owns.

        Any other tensor (a loaded one, a tensor saved on meta) is returned as it is.

        Raises:
            CorruptCheckpointError: the file was truncated or changed after it was
                opened, or the record fails its CRC-32.
        """
        if not tensor.is_meta or tensor.layout is not torch.strided:
            return tensor
        entry = self._storages.get(tensor.untyped_storage()._cdata)
        if entry is None:
            return tensor
        record, dtype = entry
        cached = self._last is not None and self._last[0] == record.name
        storage = self._last[1] if cached and self._last is not None else self._read(record, dtype)
        self._last = (record.name, storage)
        out = torch.empty(0, dtype=tensor.dtype).set_(storage, tensor.storage_offset(), tensor.shape, tensor.stride())
        whole = tensor.storage_offset() == 0 and tensor.is_contiguous() and out.nbytes == record.size
        return out if whole and not cached else out.clone()  # owned: shares memory with no other tensor given out

    def _read(self, record: _Record, dtype: torch.dtype) -> torch.UntypedStorage:
        buf = torch.empty(record.size, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        done = pread_into(self.fd, view, record.offset)
        if done < record.size:
            raise CorruptCheckpointError(
                f"{self.path} ended while reading {record.name} (byte {record.offset + done} of "
                f"{record.offset + record.size}): the file was truncated or changed after it was opened; {_FIX}",
                source=self.path,
            )
        self.bytes_read += record.size
        if self.verify_crc and zlib.crc32(view) != record.crc:
            raise CorruptCheckpointError(
                f"{self.path}: record {record.name} fails its CRC-32 check (stored {record.crc:08x}, read "
                f"{zlib.crc32(view):08x}): the file is corrupt; {_FIX}",
                source=self.path,
            )
        storage = buf.untyped_storage()
        if self._swap and dtype.itemsize > 1:
            storage.byteswap(dtype)
        return storage

    def close(self) -> None:
        """Release the file handle and the cached storage."""
        self._last = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _corrupt(self, reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.path} is not a readable torch checkpoint: it is truncated or malformed ({reason}); {_FIX}",
            source=self.path,
        )
