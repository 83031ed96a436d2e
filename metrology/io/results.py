"""Result files that appear together or not at all, with a commit step between writing and showing.

An inspection leaves a PDF, a JSON document and an audit record that names them: one unit. It is
written as

1. a journal ``.<stem>.unit`` (created exclusively, locked with ``flock`` for the life of the
   writer, naming every file of the unit);
2. every file under a temporary name ``.<final name>.part`` (created exclusively, fsynced);
3. the *commit* (the caller's: appending the audit record that names the files), the point after
   which the unit exists;
4. every file linked to its final name (``link``: never replaces or follows anything already
   there), the temporary names and then the journal removed.

A failure before the commit removes the temporary files and the journal and raises
:class:`ResultsNotWritten`; nothing is left. A process killed at any step leaves a journal whose
lock died with it: :func:`recover` (run before the next unit is written into the folder) completes
a committed unit and removes an uncommitted one, so the folder holds every file of a unit or none.
Final names carry a random token (``<stem>_<8 hex>``): two writers cannot collide, whatever their
serials and clocks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from metrology.io.files import current_umask

JOURNAL_SUFFIX = ".unit"
PART_SUFFIX = ".part"
STALE_TEMP_S = 3600.0
"""Age after which a stray atomic-write temporary (``.<name>.<random>.tmp``) is removed by
:func:`recover` (an atomic write takes seconds)."""


FRESH_JOURNAL_S = 60.0
"""An empty journal younger than this belongs to a writer between creating and locking it."""


class ResultsNotWritten(RuntimeError):
    """Writing a unit failed before its commit: nothing of it was kept (the message says why)."""


class ResultsIncomplete(RuntimeError):
    """The unit was committed but its files could not all be put in place; they remain under their
    temporary names and the next :func:`recover` of the folder completes them."""


@dataclass
class ResultUnit:
    """The names of one unit of result files (nothing written yet).

    Attributes
    ----------
    folder : Path
    stem : str
        ``<base>_<token>``: the final names are ``stem + suffix``.
    token : str
        8 random hex digits, the unit's id (stored in the audit record that commits it).
    files : dict
        Suffix (``".pdf"``) -> final path.
    info : dict
        The caller's JSON-able facts, kept in the journal for :func:`recover` (which store commits
        the unit, the station id).
    """

    folder: Path
    stem: str
    token: str
    files: dict
    info: dict = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.folder / f".{self.stem}{JOURNAL_SUFFIX}"

    def part(self, suffix: str) -> Path:
        """The temporary name of the file with ``suffix``."""
        return self.folder / f".{self.files[suffix].name}{PART_SUFFIX}"


def new_unit(folder, base: str, suffixes, info: dict | None = None) -> ResultUnit:
    """Names for a new unit: ``<base>_<token><suffix>`` in ``folder`` for each suffix."""
    token = secrets.token_hex(4)
    stem = f"{base}_{token}"
    folder = Path(folder)
    return ResultUnit(folder, stem, token, {s: folder / f"{stem}{s}" for s in suffixes}, dict(info or {}))


def _create(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` (exclusive create, no link followed, fsynced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~current_umask())
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(part: Path, final: Path) -> None:
    """Give ``part`` its final name without replacing anything there, then drop the temporary name."""
    try:
        os.link(part, final)
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: rename (the token keeps names unique)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.rename(part, final)
        return
    os.unlink(part)


def _remove(paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def write_unit(unit: ResultUnit, contents: dict, commit=None) -> dict:
    """Write the files of ``unit`` as one unit (module docstring): all of them, or none.

    Parameters
    ----------
    unit : ResultUnit
    contents : dict
        Suffix -> bytes, one entry per file of the unit.
    commit : callable, optional
        ``commit()`` after every file is safely under its temporary name and before any is shown:
        the step that makes the unit exist (an audit record naming the files). If it raises,
        nothing is kept.

    Returns
    -------
    dict
        Suffix -> final path.

    Raises
    ------
    ResultsNotWritten
        Any failure before the commit completed (its cause chained); the folder is as before.
    ResultsIncomplete
        A failure after the commit; :func:`recover` completes the unit.
    """
    journal = {"format": "metrology-result-unit", "token": unit.token,
               "files": {s: p.name for s, p in unit.files.items()},
               "parts": {s: unit.part(s).name for s in unit.files}, "info": unit.info,
               "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "pid": os.getpid(), "host": socket.gethostname()}
    try:
        fd = os.open(unit.journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise ResultsNotWritten(f"cannot start writing the results in {unit.folder} "
                                f"({exc.strerror or exc}); nothing was written") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until this process ends: recover() leaves live units alone
        committed = False
        try:
            os.write(fd, json.dumps(journal).encode())
            os.fsync(fd)
            for suffix, data in contents.items():
                _create(unit.part(suffix), data)
            _fsync_folder(unit.folder)
            if commit is not None:
                commit()
            committed = True
            for suffix, final in unit.files.items():
                _place(unit.part(suffix), final)
            _fsync_folder(unit.folder)
            _remove([unit.journal])
        except BaseException as exc:
            if committed:
                if isinstance(exc, Exception):
                    raise ResultsIncomplete(
                        f"the results were recorded but not all of {', '.join(p.name for p in unit.files.values())} "
                        f"could be put in place ({type(exc).__name__}: {exc}); the next run into "
                        f"{unit.folder} completes them") from exc
                raise
            _remove([unit.part(s) for s in unit.files] + [unit.journal])
            if isinstance(exc, Exception):
                raise ResultsNotWritten(f"the results were not written, nothing was kept "
                                        f"({type(exc).__name__}: {exc})") from exc
            raise
    finally:
        os.close(fd)
    return dict(unit.files)


def _journal_state(fd: int) -> dict:
    """The journal's JSON (empty when it was cut short: then no file of the unit was written yet)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 20).decode())
    except (ValueError, OSError):
        return {}
    ok = (isinstance(data, dict) and isinstance(data.get("files"), dict) and isinstance(data.get("parts"), dict)
          and all(isinstance(v, str) and "/" not in v for d in (data["files"], data["parts"]) for v in d.values()))
    return data if ok else {}


def _settle(folder: Path, journal_path: Path, state: dict, committed) -> str | None:
    """Complete or remove the unit of one dead writer; one line saying which (None: left alone)."""
    finals = [folder / n for n in state.get("files", {}).values()]
    parts = [folder / n for n in state.get("parts", {}).values()]
    if any(f.exists() for f in finals):
        done = True
    elif not any(p.exists() for p in parts):
        done = False  # nothing of it on disk: only the journal to remove
    else:
        done = committed(state)
    if done is None:
        return f"left the unfinished results {', '.join(p.name for p in parts)} (cannot tell whether they were recorded)"
    names = ", ".join(f.name for f in finals)
    if done:
        for part, final in zip(parts, finals):
            if part.exists() and not final.exists():
                _place(part, final)
            else:
                _remove([part])
        message = f"completed the results of an interrupted run: {names}"
    else:
        _remove(parts)
        message = f"removed the unfinished results of an interrupted run: {names}" if parts and names else None
    _fsync_folder(folder)
    _remove([journal_path])
    return message


def recover(folder, committed=lambda state: False) -> list:
    """Settle the units that writers killed mid-way left in ``folder`` (module docstring).

    Parameters
    ----------
    folder : path-like
    committed : callable
        ``committed(journal) -> bool | None``: whether the unit of a dead writer was committed (its
        audit record exists), from the journal's dict (``token``, ``files``, ``info``, ``created_utc``);
        None when that cannot be told (the unit is then left alone). Not called when a final file
        already exists (then it was) or no temporary file does (nothing to keep).

    Returns
    -------
    list of str
        One line per unit completed, removed or left alone, and per stray temporary removed.
    """
    folder = Path(folder)
    messages = []
    for journal_path in sorted(folder.glob(f".*{JOURNAL_SUFFIX}")):
        try:
            fd = os.open(journal_path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # finished meanwhile, or not a regular file
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            if not journal_path.exists() or os.stat(journal_path).st_ino != os.fstat(fd).st_ino:
                continue  # finished between the listing and the lock
            state = _journal_state(fd)
            if not state and time.time() - os.fstat(fd).st_mtime < FRESH_JOURNAL_S:
                continue  # created an instant ago, its writer about to lock it
            message = _settle(folder, journal_path, state, committed)
            if message:
                messages.append(message)
        finally:
            os.close(fd)
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.is_file() and not tmp.is_symlink() and now - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
                messages.append(f"removed the stale temporary file {tmp.name} of an interrupted write")
        except OSError:
            pass
    return messages
