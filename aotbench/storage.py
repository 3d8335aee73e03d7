"""Atomic, checksummed files, stable config hashes and safe checkpoint loading.

Atomic: everything aotbench writes (records, checkpoints, caches, tables) goes through a temporary file in the same
folder followed by ``os.replace``, so an interrupted run never leaves a half-written file behind. The temporary is
named ``.{name}.{host}.{pid}.XXXXXXXX.tmp``; one left by a writer killed mid-write (SIGKILL, OOM killer) is deleted by
the next write of the same target once it is provably stale: made on this host by a process that no longer exists,
and untouched for ``STALE_TMP_SECONDS`` (a guard for pid namespaces: another container on this host, same hostname,
same folder). A temporary of another host or of a live process, or named otherwise, is never touched.

Modes: ``mkstemp`` creates files 0600; a written file gets ``0o666 & ~umask``, what ``open()`` would give it, so a
group can read a shared results folder when the umask lets it.

Checksums: the binary files aotbench reads back (torch checkpoints and caches, npz artifacts and FID statistics) are
zip archives, ``torch.save``'s format and ``np.savez``'s. :func:`write_verified_bytes` (and so
:func:`atomic_torch_save`) stores the sha256 of the archive in the archive's own comment, the last bytes of the file
after the end-of-central-directory record (PKWARE APPNOTE.TXT 4.3.16): ``aotbench-sha256:<64 hex>``, the digest of
every byte before it. The file stays a valid zip that ``torch.load`` and ``np.load`` read as before, and it is one
file replaced atomically (a sidecar ``.sha256`` could disagree with its file after a crash between two renames).
:func:`load_checkpoint` and :func:`read_verified_bytes` refuse, in one line, a file whose bytes do not match the
digest or that has none: torch does not check its zip CRCs, so a few flipped bytes in the weights load silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

STALE_TMP_SECONDS = 600
_EOCD = b"PK\x05\x06"  # end of central directory record: 22 bytes, the last 2 the comment length
_TAG = b"aotbench-sha256:"
_SEAL = len(_TAG) + 64  # the comment: tag + hex digest
_REBUILD = "deleting it makes the next run rebuild it"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ADVICE = re.compile(r"weights_only|trust|safe_globals|can still be loaded|arbitrary code", re.IGNORECASE)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (sorted keys), the basis of train_key and cell_key."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _umask() -> int:
    """The umask, read without changing it where Linux shows it (``/proc/self/status``, Linux 4.7+); else set to
    0o077 for the instant of reading, so that a file another thread creates meanwhile is only ever more private."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` that a killed writer left (see the module docstring); returns them."""
    path = Path(path)
    mine = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_host())}\.(\d+)\.[^.]+\.tmp")
    removed = []
    try:
        entries = [e for e in os.scandir(path.parent) if mine.fullmatch(e.name)]
    except OSError:
        return removed
    for e in entries:
        try:
            if (not _alive(int(mine.fullmatch(e.name)[1]))
                    and time.time() - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:  # already removed by another run, or not ours to remove: never fail a write for it
            pass
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary in the same folder, fsync, ``os.replace``), creating its
    folder; the file gets mode ``0o666 & ~umask``.

    On failure the temporary is removed and an OSError (a full disk) names ``path``, not the temporary. Afterwards the
    stale temporaries of killed writers of ``path`` are removed (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:  # a full disk: name the file, not its temporary
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    remove_stale_temporaries(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as JSON (indent 2, sorted keys, NaN allowed) and a newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_verified_bytes(path: str | Path, data: bytes) -> None:
    """Write a zip archive without a comment (``torch.save`` or ``np.savez`` bytes) atomically, its sha256 in its
    comment (see the module docstring); read it back with :func:`read_verified_bytes`."""
    if len(data) < 22 or data[-22:-18] != _EOCD or data[-2:] != b"\0\0":
        raise ValueError("write_verified_bytes takes a zip archive without a comment (torch.save or np.savez bytes)")
    head = data[:-2] + _SEAL.to_bytes(2, "little")
    atomic_write_bytes(path, head + _TAG + hashlib.sha256(head).hexdigest().encode())


def _check_seal(f, path: Path, what: str) -> None:
    """Raise :class:`UserError` unless the open file ``f`` ends with the sha256 of the bytes before it."""
    size = os.fstat(f.fileno()).st_size
    f.seek(max(size - 22 - _SEAL, 0))
    tail = f.read(22 + _SEAL)
    if len(tail) < 22 + _SEAL or (tail[:4], tail[20:22], tail[22:38]) != (_EOCD, _SEAL.to_bytes(2, "little"), _TAG):
        raise UserError(f"corrupt or unsafe {what} {path}: not an aotbench file with a sha256 checksum (truncated, "
                        f"damaged, or written by another program or an aotbench older than checksums); {_REBUILD}")
    h, left = hashlib.sha256(), size - _SEAL
    f.seek(0)
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    if h.hexdigest().encode() != tail[38:]:
        raise UserError(f"corrupt {what} {path}: its content does not match the sha256 checksum it was written "
                        f"with (the file is damaged); {_REBUILD}")


def read_verified_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of a file written by :func:`write_verified_bytes`, after checking its sha256 (else UserError)."""
    path = Path(path)
    with open(path, "rb") as f:
        _check_seal(f, path, what)
        f.seek(0)
        return f.read()


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` of ``obj``, written atomically with its sha256 sealed in (:func:`write_verified_bytes`); read it
    back with :func:`load_checkpoint`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_verified_bytes(path, buf.getvalue())


def _reason(err: BaseException) -> str:
    """A library's error in one line, without terminal colour codes or its advice to lower a safety setting."""
    lines = [s.strip() for s in _ANSI.sub("", str(err)).splitlines()]
    lines = [s for s in lines if s and not _ADVICE.search(s)]
    return (lines[0] if lines else type(err).__name__)[:200]


def load_checkpoint(path: str | Path, fmt: str, map_location="cpu") -> dict:
    """Load an aotbench file with ``weights_only=True`` after checking its sha256, and check its ``format`` tag.

    A truncated, corrupt or foreign file (or one that would need arbitrary unpickling) raises :class:`UserError`.
    The checked bytes are the loaded ones: one open file, which ``os.replace`` by another writer cannot swap.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        _check_seal(f, path, "checkpoint")
        f.seek(0)
        try:
            obj = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:  # torch's own message advises weights_only=False: not ours to give
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            held = f"a Python object ({found[1]})" if found else "a Python object"
            raise UserError(f"corrupt or unsafe checkpoint {path}: it holds {held} where aotbench saves only tensors "
                            f"and plain data, and aotbench never unpickles objects (that could run code); "
                            f"{_REBUILD}") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
            raise UserError(f"corrupt or unsafe checkpoint {path}: {_reason(err)}; {_REBUILD}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} is not an aotbench {fmt} file (found {found!r})")
    return obj


def check_writable(folder: str | Path, *subfolders: str, hint: str = "") -> None:
    """Fail now, in one line, where aotbench could not write its results (else a traceback comes only after training
    and sampling): create, fill with a byte, fsync and remove a probe file in ``folder`` and in each of
    ``subfolders`` that exists; for a missing ``folder``, in the nearest folder above it, where it would be created
    (nothing is created before a run has checked its input). A probe, not ``os.access``: root passes permission
    bits, and they say nothing of a read-only mount, an immutable folder or a full disk."""
    folder = Path(folder)
    where = folder
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise UserError(f"cannot write into {folder}: {where} is a file, not a folder{'; ' + hint if hint else ''}")
    for where in [where, *(folder / s for s in subfolders if (folder / s).is_dir())]:
        try:
            fd, probe = tempfile.mkstemp(dir=where, prefix=".aotbench-write-probe.", suffix=".tmp")
            try:
                os.write(fd, b"\0")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as err:
            raise UserError(f"cannot write into {where}: {err.strerror or err}{'; ' + hint if hint else ''}") from None


def read_json(path: str | Path) -> Any:
    """The content of a JSON file. Raises :class:`UserError` when it is not valid JSON (OSError, e.g. a missing file,
    passes through)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"corrupt JSON file {path}: {err}") from None
