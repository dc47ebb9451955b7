"""Run directories that are never lost, never half-written and never written by two processes.

A run directory holds ``config.json``, ``checkpoint.pt``, ``metrics.jsonl``, ``test.json``,
``evaluation.json`` and figures. :class:`RunDirectory` owns one of them:

- :meth:`RunDirectory.open` decides, *without writing anything*, whether the command may use
  the directory (``"new"``, ``"resume"``, ``"overwrite"`` or ``"read"``) and, for the writing
  modes, takes an exclusive lock (``PATH/.lock`` with ``fcntl.flock``) that a second writer
  cannot get. The operating system drops the lock when the process dies, so a crashed run
  never blocks the next command.
- **Validation first.** After ``open`` the caller checks every option and loads the data;
  a refusal at this stage (``ValueError``) leaves the disk exactly as it was: a ``"new"``
  directory that ``open`` created is removed again and an ``"overwrite"`` does not move
  anything. Only :meth:`RunDirectory.start` writes (``config.json``; for ``"overwrite"`` it
  first moves the old run aside to ``PATH.old-<timestamp>``), and every other write method
  refuses to run before it::

      with RunDirectory.open(out, "resume" if args.resume else "new") as run:
          config = merge(run.read_config(), args) if run.mode == "resume" else config_of(args)
          data = load_and_validate(config)                    # may raise ValueError
          if run.mode == "resume":
              check_fingerprint(run.read_config()["data"], config["data"])
          run.start(config)                                   # first write
          run.rewrite_metrics(checkpoint["history"])          # on resume
          for epoch in ...:
              with run.guard("checkpoint.pt"):
                  save_checkpoint(run.checkpoint_path, state)  # checkpoint first ...
              run.append_metrics(record)                       # ... then its metrics line

- Every file is written atomically (a temporary file in the same directory, flushed and
  fsynced, then ``os.replace``), so a crash or a full disk leaves the previous version
  intact. ``metrics.jsonl`` is the *derived* view of the checkpoint's history: write the
  checkpoint before the metrics line and call :meth:`RunDirectory.rewrite_metrics` with the
  checkpoint's history on resume, and the two always agree.
- JSON never holds ``NaN``/``Infinity``: non-finite numbers become ``null`` with a
  :class:`NonFiniteWarning` naming the key and why.
- An ``OSError`` while writing (disk full, file size limit, quota) becomes a
  :class:`RunWriteError` (a ``ValueError``) that names the last good checkpoint and the
  ``pyro-vae train --resume PATH`` command.

:func:`data_fingerprint` and :func:`check_fingerprint` make ``--resume`` refuse to continue
on other data (another ``--data-file``, split ``--seed`` or ``--binarize``).

This module imports only the standard library; numpy arrays/scalars and torch tensors are
recognised when those libraries are already imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "FINGERPRINT_OPTIONS",
    "LOCK_NAME",
    "METRICS_NAME",
    "NonFiniteWarning",
    "Replacement",
    "RunDirectory",
    "RunWriteError",
    "atomic_write_bytes",
    "bundled_data_files",
    "check_fingerprint",
    "data_fingerprint",
    "dumps_json",
    "json_safe",
]

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".lock"

Mode = Literal["new", "resume", "overwrite", "read"]
MODES: tuple[str, ...] = ("new", "resume", "overwrite", "read")

#: Temporary files of :func:`atomic_write_bytes` are named ``.NAME.tmp-XXXXXXXX.SUFFIX``.
_TEMP_RE = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]{8}(\.[^.]*)?$")
#: ... and those of ``pyro_vae.train.checkpoint.save_checkpoint`` ``NAME.XXXXXXXX.tmp``.
_CKPT_TEMP_RE = re.compile(r"^.+\.[A-Za-z0-9_]{8}\.tmp$")


# --------------------------------------------------------------------------- errors


class RunWriteError(ValueError):
    """A file of a run directory could not be written (disk full, file size limit, quota,
    permissions). The message says why, what is still intact and how to continue.

    :ivar path: the file that was being written.
    :ivar errno: the ``errno`` of the underlying ``OSError`` (``ENOSPC``, ``EFBIG``, ...).
    :ivar checkpoint: the last good checkpoint of the run, or ``None``.
    """

    def __init__(
        self, message: str, *, path: Path, errno: int | None, checkpoint: Path | None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.checkpoint = checkpoint


class NonFiniteWarning(UserWarning):
    """A NaN or infinite number was written to JSON as ``null``."""


# --------------------------------------------------------------------------- JSON


@dataclass(frozen=True)
class Replacement:
    """One non-finite number that :func:`json_safe` replaced by ``None``.

    :ivar path: where it was, e.g. ``"history[2].val_elbo"`` (``""`` for the top level).
    :ivar value: ``"nan"``, ``"inf"`` or ``"-inf"``.
    :ivar reason: the caller's explanation from ``reasons``, or ``None``.
    """

    path: str
    value: str
    reason: str | None


def _scalar(obj: Any) -> Any:
    """numpy scalars/arrays and torch tensors as Python numbers or (nested) lists."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        return obj.item() if obj.dim() == 0 else obj.tolist()
    return obj


def _key(key: Any, path: str) -> str:
    key = _scalar(key)
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float):
        return repr(key) if math.isfinite(key) else str(key)
    raise TypeError(
        f"{_show(path)} has a key of type {type(key).__name__}, which JSON cannot hold; "
        "use str, int or float keys."
    )


def _show(path: str) -> str:
    return path or "the top level"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def json_safe(
    obj: Any, *, reasons: Mapping[str, str] | None = None
) -> tuple[Any, list[Replacement]]:
    """``obj`` as plain JSON data, with every non-finite float replaced by ``None``.

    Dicts, lists, tuples, strings, numbers, booleans, ``None``, ``os.PathLike`` (as
    strings), numpy scalars/arrays and torch tensors are accepted, nested to any depth.

    :param obj: the data to write.
    :param reasons: explanations of expected non-finite values, looked up by the full key
        path (``"history[2].val_elbo"``), the path with list indices as ``[*]``
        (``"history[*].val_elbo"``) or the innermost key (``"val_elbo"``).
    :return: the cleaned copy and the list of replacements made, in document order.
    :raises TypeError: for anything else (e.g. a set or an arbitrary object), naming where
        it is; circular references raise ``ValueError``.
    """
    reasons = dict(reasons or {})
    replaced: list[Replacement] = []
    active: set[int] = set()

    def clean(value: Any, path: str, generic: str, last: str) -> Any:
        value = _scalar(value)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return float(value)
            reason = reasons.get(path, reasons.get(generic, reasons.get(last)))
            replaced.append(Replacement(path, str(value), reason))
            return None
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in active:
                raise ValueError(f"{_show(path)} contains itself; JSON cannot hold cycles.")
            active.add(id(value))
            try:
                if isinstance(value, Mapping):
                    out: dict[str, Any] = {}
                    for k, v in value.items():
                        k = _key(k, path)
                        out[k] = clean(v, _join(path, k), _join(generic, k), k)
                    return out
                return [
                    clean(v, f"{path}[{i}]", f"{generic}[*]", last) for i, v in enumerate(value)
                ]
            finally:
                active.discard(id(value))
        raise TypeError(
            f"{_show(path)} is a {type(value).__name__}, which JSON cannot hold; convert it "
            "to a number, string, list or dict first."
        )

    return clean(obj, "", "", ""), replaced


def _warn(replaced: list[Replacement], where: str, max_groups: int = 10) -> None:
    """One :class:`NonFiniteWarning` per key (list indices folded), at most ``max_groups``."""
    groups: dict[str, list[Replacement]] = {}
    for r in replaced:
        groups.setdefault(re.sub(r"\[\d+\]", "[*]", r.path), []).append(r)
    for n, (generic, items) in enumerate(groups.items()):
        if n == max_groups:
            rest = sum(len(v) for v in list(groups.values())[max_groups:])
            warnings.warn(
                f"{where}: {rest} more non-finite value(s) under {len(groups) - max_groups} "
                "other key(s) were written as null.",
                NonFiniteWarning,
                stacklevel=4,
            )
            break
        first = items[0]
        why = f" ({first.reason})" if first.reason else ""
        if len(items) == 1:
            what = f"{_show(first.path)} is {first.value}"
        else:
            shown = ", ".join(f"{r.path}={r.value}" for r in items[:3])
            more = ", ..." if len(items) > 3 else ""
            what = f"{generic} is non-finite in {len(items)} places ({shown}{more})"
        warnings.warn(
            f"{where}: {what}, which JSON cannot represent; written as null{why}.",
            NonFiniteWarning,
            stacklevel=4,
        )


def dumps_json(
    obj: Any,
    *,
    reasons: Mapping[str, str] | None = None,
    indent: int | None = 2,
    where: str = "JSON output",
) -> str:
    """Strict JSON text for ``obj`` (see :func:`json_safe`), non-finite floats as ``null``.

    :param reasons: explanations of expected non-finite values (see :func:`json_safe`).
    :param indent: as for :func:`json.dumps`; ``None`` gives one line.
    :param where: the name used in warnings, e.g. the file name.
    :return: the text, without a trailing newline.
    :warns NonFiniteWarning: naming each key that held a non-finite number and why.
    """
    clean, replaced = json_safe(obj, reasons=reasons)
    if replaced:
        _warn(replaced, where)
    # allow_nan=False: even a bug in json_safe can never write NaN/Infinity.
    return json.dumps(clean, allow_nan=False, indent=indent)


# --------------------------------------------------------------------------- atomic files


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically: readers see the old or the new file, never
    a mix, and a failure (disk full, ...) leaves the old file intact and no temporary file.

    :raises OSError: when the write fails; :class:`RunDirectory` turns it into a
        :class:`RunWriteError`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces it on success."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- locking


def _read_holder(fd: int) -> tuple[int | None, str]:
    """PID and description written by the lock holder (retrying briefly while it writes)."""
    text = ""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if text.strip():
            break
        time.sleep(0.025)
    lines = text.splitlines()
    try:
        pid = int(lines[0].strip()) if lines else None
    except ValueError:
        pid = None
    return pid, (lines[1].strip() if len(lines) > 1 else "")


def _held_by_message(path: Path, pid: int | None, command: str) -> str:
    who = f"process {pid}" if pid is not None else "another process"
    what = f" ({command})" if command else ""
    return (
        f"Run directory {path} is being written by {who}{what}; wait for it to finish or "
        "choose another --out."
    )


def _lock(path: Path) -> int:
    """Take ``path/.lock`` exclusively and return its descriptor, or raise ValueError
    naming the holder. The lock file that is locked is checked to still be the one in the
    directory (another process may have moved the run or removed the file meanwhile)."""
    lock_path = path / LOCK_NAME
    for _ in range(10):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, command = _read_holder(fd)
            os.close(fd)
            raise ValueError(_held_by_message(path, pid, command)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.stat(lock_path)
            own = os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                command = " ".join(shlex.quote(a) for a in sys.argv)[:300]
                os.pwrite(fd, f"{os.getpid()}\n{command}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            return fd
        os.close(fd)
    raise ValueError(
        f"Could not lock run directory {path}: its lock file keeps being replaced by another "
        "process; wait for the other pyro-vae command to finish or choose another --out."
    )


def _unlock(path: Path, fd: int) -> None:
    """Remove ``path/.lock`` if it is still ours, then release the lock."""
    try:
        st = os.stat(path / LOCK_NAME)
        own = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            os.unlink(path / LOCK_NAME)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> int | None:
    """PID of the process holding ``path/.lock``, ``None`` when nobody holds it."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _ = _read_holder(fd)
            return pid if pid is not None else -1
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- run directory


def _entries(path: Path) -> list[str]:
    """Names in ``path`` other than the lock file."""
    return sorted(n for n in os.listdir(path) if n != LOCK_NAME)


def _describe(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class RunDirectory:
    """One run directory, opened by one command. Use :meth:`open`, not the constructor,
    and close it (``with RunDirectory.open(...) as run:``) to release the lock.

    :ivar path: the run directory.
    :ivar mode: ``"new"``, ``"resume"``, ``"overwrite"`` or ``"read"``.
    :ivar moved_to: after :meth:`start` in ``"overwrite"`` mode, where the old run went.
    :ivar message: after :meth:`start`, a line for the user when something was moved (for
        ``"overwrite"``), else ``None``.
    """

    def __init__(
        self,
        path: Path,
        mode: str,
        *,
        lock_fd: int | None,
        created: list[Path],
        checkpoint_name: str,
        config_name: str,
    ) -> None:
        self.path = path
        self.mode = mode
        self.checkpoint_name = checkpoint_name
        self.config_name = config_name
        self.moved_to: Path | None = None
        self.message: str | None = None
        self._lock_fd = lock_fd
        self._created = created
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        mode: Mode = "new",
        *,
        checkpoint_name: str = CHECKPOINT_NAME,
        config_name: str = CONFIG_NAME,
    ) -> RunDirectory:
        """Open a run directory for one command; a refusal writes nothing at all.

        - ``"new"``: the directory must be missing or empty (it is created).
        - ``"resume"``: it must hold the config and the checkpoint.
        - ``"overwrite"``: anything; the old run is moved aside by :meth:`start` (not here).
        - ``"read"``: it must hold the config and the checkpoint; no lock is taken, and only
          outputs (:meth:`write_json`, :meth:`atomic_path`) may be written.

        :param path: the run directory.
        :param mode: one of the modes above.
        :param checkpoint_name: the checkpoint file (``model.pt`` for semisupervised runs).
        :param config_name: the config file.
        :raises ValueError: naming the fix: the directory is not usable in this mode, or
            another process is writing it (naming its PID).
        """
        if mode not in MODES:
            raise ValueError(f"Unknown run directory mode {mode!r}; use one of {MODES}.")
        path = Path(path)
        quoted = shlex.quote(str(path))
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{path} exists and is not a directory; choose another --out for the run."
            )
        if mode != "read" and path.is_dir():
            # A live writer is the first thing to report (probing its lock writes nothing).
            holder = _lock_holder(path)
            if holder is not None:
                raise ValueError(_held_by_message(path, None if holder < 0 else holder, ""))
        if mode in ("resume", "read"):
            cls._check_run(path, mode, checkpoint_name, config_name)
        elif mode == "new" and path.is_dir():
            names = _entries(path)
            if names:
                raise ValueError(
                    f"{path} is not empty ({_describe(names)}): it holds an earlier run. Use "
                    f"--resume {quoted} to continue it, or --overwrite to replace it (the old "
                    f"run is moved aside to {path.name}.old-<timestamp>, not deleted); or "
                    "choose another --out."
                )
        if mode == "read":
            return cls(
                path,
                mode,
                lock_fd=None,
                created=[],
                checkpoint_name=checkpoint_name,
                config_name=config_name,
            )

        created: list[Path] = []
        try:
            if not path.exists():
                created = [p for p in path.parents if not p.exists()]  # innermost first
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.mkdir(path)
                    created.insert(0, path)
                except FileExistsError:  # another process was faster; the lock decides
                    pass
            fd = _lock(path)
        except OSError as e:
            _remove_dirs(created)
            raise ValueError(
                f"Cannot write the run directory {path} ({e.strerror or e}); check its "
                "permissions and free space, or choose another --out."
            ) from None
        except BaseException:
            _remove_dirs(created)
            raise
        run = cls(
            path,
            mode,
            lock_fd=fd,
            created=created,
            checkpoint_name=checkpoint_name,
            config_name=config_name,
        )
        try:
            # Re-check under the lock: another process may have written meanwhile.
            if mode == "new" and _entries(path):
                raise ValueError(
                    f"{path} was filled by another process while this one opened it; "
                    "choose another --out."
                )
            if mode == "resume":
                cls._check_run(path, mode, checkpoint_name, config_name)
        except BaseException:
            run.close()
            raise
        return run

    @staticmethod
    def _check_run(path: Path, mode: str, checkpoint_name: str, config_name: str) -> None:
        quoted = shlex.quote(str(path))
        verb = "resume" if mode == "resume" else "read"
        if not path.is_dir():
            fix = (
                f"check the path, or start a new run with --out {quoted}"
                if mode == "resume"
                else "check the path; it should be the --out of a pyro-vae train run"
            )
            raise ValueError(f"Cannot {verb} {path}: it does not exist; {fix}.")
        missing = [n for n in (config_name, checkpoint_name) if not (path / n).is_file()]
        if missing:
            fix = (
                "the run stopped before its first checkpoint was saved: start it again with "
                f"--out {quoted} --overwrite"
                if missing == [checkpoint_name]
                else f"it is not a pyro-vae run directory: check the path or start a new run "
                f"with --out {quoted} --overwrite"
            )
            raise ValueError(f"Cannot {verb} {path}: it has no {' and no '.join(missing)}; {fix}.")

    @staticmethod
    def writer_pid(path: str | os.PathLike) -> int | None:
        """PID of the process writing the run directory ``path`` (``-1`` if unknown), or
        ``None`` if no process holds its lock; use it to warn when reading a live run."""
        return _lock_holder(Path(path))

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        """``PATH/config.json``."""
        return self.path / self.config_name

    @property
    def checkpoint_path(self) -> Path:
        """``PATH/checkpoint.pt``."""
        return self.path / self.checkpoint_name

    @property
    def metrics_path(self) -> Path:
        """``PATH/metrics.jsonl``."""
        return self.path / METRICS_NAME

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (writing is allowed)."""
        return self._started

    # ------------------------------------------------------------------ reading

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.json``.

        :raises ValueError: if it is missing or not valid JSON.
        """
        try:
            config = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"{self.path} has no {self.config_name}: it is not a pyro-vae run directory, "
                "or the run was interrupted before it started."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{self.config_path} is not valid JSON ({e}); the file was damaged outside "
                "pyro-vae. Start a new run with --out."
            ) from None
        if not isinstance(config, dict):
            raise ValueError(f"{self.config_path} does not hold a JSON object.")
        return config

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (``[]`` if it is missing); an unterminated
        last line (a crash mid-write) is ignored."""
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is unfinished
        records = []
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{self.metrics_path} line {i + 1} is not JSON ({e}); it is rewritten "
                    "from the checkpoint by pyro-vae train --resume."
                ) from None
        return records

    # ------------------------------------------------------------------ writing

    def _check_writable(self, what: str, *, output: bool = False) -> None:
        if self._closed:
            raise RuntimeError(f"Cannot write {what}: the run directory {self.path} is closed.")
        if self.mode == "read":
            if output:
                return
            raise RuntimeError(f"Cannot write {what}: {self.path} was opened for reading.")
        if not self._started:
            raise RuntimeError(
                f"Cannot write {what} before RunDirectory.start(config): validate the options "
                "and data first, then start the run."
            )

    def start(self, config: Mapping[str, Any] | None = None) -> Path:
        """Begin writing the run: the first write of a ``"new"``, ``"overwrite"`` or
        ``"resume"`` run. Call it only after every option and the data were validated.

        For ``"overwrite"`` the existing run (if any) is first moved aside atomically to
        ``PATH.old-<timestamp>`` (never deleted); :attr:`moved_to` and :attr:`message` say
        where. Then ``config`` is written to ``config.json`` atomically (for ``"resume"``,
        ``None`` keeps the saved config). In ``"new"`` mode ``metrics.jsonl`` starts empty.

        :param config: the JSON-able run configuration.
        :return: the path of ``config.json``.
        :raises RunWriteError: if the disk is full or another write error occurs.
        """
        if self._closed:
            raise RuntimeError(f"The run directory {self.path} is closed.")
        if self.mode == "read":
            raise RuntimeError(f"Cannot start a run in {self.path}: it was opened for reading.")
        if self._started:
            raise RuntimeError(f"The run in {self.path} was already started.")
        if config is None and self.mode != "resume":
            raise RuntimeError(f"start() needs the config of a {self.mode!r} run.")
        if self.mode == "overwrite" and _entries(self.path):
            with self.guard(self.path.name):
                self._move_aside()
        self._started = True
        try:
            if self.mode == "resume":
                self.remove_stale_temporaries()
            if config is not None:
                self.write_json(self.config_name, config)
            if self.mode in ("new", "overwrite"):
                self.rewrite_metrics([])
        except BaseException:
            if self.mode == "new":  # nothing of the run was written: leave no trace
                self._started = False
            raise
        return self.config_path

    def _move_aside(self) -> None:
        """Rename the locked old run to ``PATH.old-<timestamp>`` and lock a fresh ``PATH``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        parent, name = self.path.parent, self.path.name
        for n in range(1000):
            target = parent / (f"{name}.old-{stamp}" + (f"-{n}" if n else ""))
            try:
                os.mkdir(target)  # claims the name exclusively ...
                break
            except FileExistsError:
                continue
        else:
            raise ValueError(f"Could not find a free name {name}.old-{stamp}-N in {parent}.")
        try:
            os.rename(self.path, target)  # ... and this atomically replaces the empty claim
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(target)
            raise
        old_fd, self._lock_fd = self._lock_fd, None
        if old_fd is not None:
            _unlock(target, old_fd)  # the lock file is ours, not part of the old run
        _fsync_dir(parent)
        self.moved_to = target
        self.message = (
            f"Moved the previous run in {self.path} to {target} (kept; delete it yourself "
            "when it is no longer needed)."
        )
        try:
            os.mkdir(self.path)
            self._created = [self.path]
        except FileExistsError:
            pass
        try:
            self._lock_fd = _lock(self.path)
            if _entries(self.path):
                raise ValueError(
                    f"{self.path} was filled by another process while this one replaced it; "
                    "choose another --out."
                )
        except ValueError as e:
            raise ValueError(f"{e} (The previous run was moved to {target}.)") from None

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn an ``OSError`` raised while writing ``what`` into a :class:`RunWriteError`
        that names the cause, the last good checkpoint and the resume command. Wrap writes
        made outside this class in it, e.g. ``save_checkpoint`` and ``savefig``."""
        try:
            yield
        except OSError as e:
            raise self._write_error(e, self.path / what) from e

    def _write_error(self, exc: OSError, target: Path) -> RunWriteError:
        code = exc.errno
        if code == errno.ENOSPC:
            cause = "the disk is full"
        elif code == errno.EFBIG:
            cause = "the file size limit was hit (see `ulimit -f`)"
        elif code == getattr(errno, "EDQUOT", -1):
            cause = "the disk quota is exceeded"
        else:
            cause = "the write failed"
        detail = exc.strerror or str(exc)
        head = f"Could not write {target}: {cause} ({detail})."
        if target.name != self.path.name:
            head += f" The previous {target.name}, if any, is intact."
        quoted = shlex.quote(str(self.path))
        ckpt = self.checkpoint_path if self.checkpoint_path.is_file() else None
        if self.mode == "read":
            tail = " The run itself is unchanged; free some space and run the command again."
        elif ckpt is not None:
            saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ckpt.stat().st_mtime))
            tail = (
                f" The last good checkpoint is {ckpt} (saved {saved}). Free some space, then "
                f"continue with: pyro-vae train --resume {quoted}"
            )
        else:
            tail = (
                " No checkpoint was saved yet, so there is nothing to resume: free some space "
                f"and start again with: pyro-vae train --out {quoted} --overwrite"
            )
        return RunWriteError(head + tail, path=target, errno=code, checkpoint=ckpt)

    def write_json(
        self,
        name: str,
        obj: Any,
        *,
        reasons: Mapping[str, str] | None = None,
        indent: int | None = 2,
    ) -> Path:
        """Atomically write ``obj`` as strict JSON to ``PATH/name``.

        Non-finite floats (also numpy/torch scalars, nested anywhere) become ``null`` with a
        :class:`NonFiniteWarning` naming the key and the cause.

        :param name: file name inside the run directory, e.g. ``"evaluation.json"``.
        :param reasons: why a key may be non-finite, e.g.
            ``{"nll_stderr": "K=1 importance sample has no standard error"}``.
        :param indent: as for :func:`json.dumps`.
        :raises RunWriteError: if the file cannot be written; the old file stays intact.
        """
        self._check_writable(name, output=True)
        text = dumps_json(obj, reasons=reasons, indent=indent, where=name) + "\n"
        with self.guard(name):
            return atomic_write_bytes(self.path / name, text.encode())

    @contextlib.contextmanager
    def atomic_path(self, name: str) -> Iterator[Path]:
        """A temporary path (same suffix as ``name``) for writers that need a file name,
        e.g. ``with run.atomic_path("samples.png") as p: fig.savefig(p)``; it replaces
        ``PATH/name`` when the block succeeds and is removed when it fails.

        :raises RunWriteError: if the file cannot be written.
        """
        self._check_writable(name, output=True)
        with self.guard(name), _atomic_path(self.path / name) as tmp:
            yield tmp

    def append_metrics(
        self, record: Mapping[str, Any], *, reasons: Mapping[str, str] | None = None
    ) -> None:
        """Append one record as a line of ``metrics.jsonl`` (flushed and fsynced). Write the
        checkpoint holding this record first, so the file is never ahead of it.

        :raises RunWriteError: if the line cannot be written; a partly written line is cut
            off again, so the file keeps its previous content.
        """
        self._check_writable(METRICS_NAME)
        line = (
            dumps_json(record, reasons=reasons, indent=None, where=METRICS_NAME) + "\n"
        ).encode()
        with self.guard(METRICS_NAME):
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, line)
                    os.fsync(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)

    def rewrite_metrics(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        reasons: Mapping[str, str] | None = None,
    ) -> Path:
        """Atomically replace ``metrics.jsonl`` by one line per record, e.g. with the
        checkpoint's history on resume, so that the file agrees with the checkpoint.

        :raises RunWriteError: if the file cannot be written; the old file stays intact.
        """
        self._check_writable(METRICS_NAME)
        records = list(records)
        text = "".join(
            dumps_json(r, reasons=reasons, indent=None, where=f"{METRICS_NAME} line {i + 1}") + "\n"
            for i, r in enumerate(records)
        )
        with self.guard(METRICS_NAME):
            return atomic_write_bytes(self.metrics_path, text.encode())

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Release the lock (removing ``PATH/.lock``). A ``"new"`` or ``"overwrite"`` run
        that was never started leaves nothing behind: a directory that :meth:`open` created
        is removed again. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            _unlock(self.path, fd)
        if not self._started:
            _remove_dirs(self._created)

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r}, mode={self.mode!r})"

    def remove_stale_temporaries(self) -> list[str]:
        """Delete temporary files left by a process killed mid-write (``.NAME.tmp-*`` and
        ``checkpoint.pt.XXXXXXXX.tmp``); only while holding the lock, after :meth:`start`.

        :return: the names removed.
        """
        self._check_writable("temporary files")
        if self.mode == "read":
            return []
        removed = []
        for name in os.listdir(self.path):
            stale = _TEMP_RE.match(name) or (
                name.startswith(self.checkpoint_name + ".") and _CKPT_TEMP_RE.match(name)
            )
            if stale and (self.path / name).is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / name)
                removed.append(name)
        return sorted(removed)


def _remove_dirs(dirs: list[Path]) -> None:
    """Remove the directories ``dirs`` (innermost first) that are still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)


# --------------------------------------------------------------------------- fingerprints


FINGERPRINT_VERSION = 1

#: The ``pyro-vae train`` option that sets each fingerprint field.
FINGERPRINT_OPTIONS: dict[str, str] = {
    "dataset": "--dataset",
    "files": "--data-file",
    "split_sizes": "--data-file",
    "split_seed": "--seed",
    "binarize": "--binarize",
}


def _sha256(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _file_entry(path: Path) -> dict[str, Any]:
    if path.is_file():
        sha, size = _sha256(path)
        return {"path": str(path.resolve()), "bytes": size, "sha256": sha}
    if path.is_dir():
        digest, size = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            sha, n = _sha256(f)
            digest.update(f"{f.relative_to(path).as_posix()}\0{sha}\n".encode())
            size += n
        return {"path": str(path.resolve()), "bytes": size, "sha256": digest.hexdigest()}
    raise ValueError(f"The data file {path} does not exist; check --data-file / --data-dir.")


def bundled_data_files() -> list[Path]:
    """The files of the bundled MNIST-10k dataset (for :func:`data_fingerprint`)."""
    folder = Path(__file__).resolve().parent / "datasets"
    return [folder / "mnist10k-images-idx3-ubyte.gz", folder / "mnist10k-labels-idx1-ubyte.gz"]


def data_fingerprint(
    data_files: str | os.PathLike | Sequence[str | os.PathLike] | None,
    *,
    dataset: str | None = None,
    split_sizes: Mapping[str, int] | None = None,
    split_seed: int | None = None,
    binarize: str | None = None,
) -> dict[str, Any]:
    """A JSON-able description of the data a run trains on, to store in its config and
    compare on resume with :func:`check_fingerprint`.

    :param data_files: the file(s) the data is read from (a directory is hashed file by
        file); for the bundled dataset :func:`bundled_data_files`. ``None``: not recorded.
    :param dataset: the dataset name (``--dataset``).
    :param split_sizes: examples per split, e.g. ``{"train": 320, "valid": 40, "test": 40}``.
    :param split_seed: the seed of a random train/valid/test split (``--seed``).
    :param binarize: the binarization mode (``--binarize``).
    :return: ``{"version", "dataset", "files": [{"path", "bytes", "sha256"}], "split_sizes",
        "split_seed", "binarize"}``; the content hash is streamed (sha256).
    :raises ValueError: if a data file does not exist.
    """
    if data_files is None:
        files = []
    elif isinstance(data_files, (str, os.PathLike)):
        files = [Path(data_files)]
    else:
        files = [Path(f) for f in data_files]
    return {
        "version": FINGERPRINT_VERSION,
        "dataset": dataset,
        "files": [_file_entry(f) for f in files],
        "split_sizes": None if split_sizes is None else {k: int(v) for k, v in split_sizes.items()},
        "split_seed": None if split_seed is None else int(split_seed),
        "binarize": binarize,
    }


def _files_text(files: list[Mapping[str, Any]]) -> str:
    return (
        ", ".join(f"{f.get('path')} (sha256 {str(f.get('sha256'))[:12]}…)" for f in files) or "none"
    )


def check_fingerprint(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    options: Mapping[str, str] | None = None,
) -> None:
    """Refuse to resume a run on other data than it was trained on.

    Files are compared by content (sha256), not by path: a moved but identical data file is
    accepted. A field missing from ``saved`` (an older run) is not compared.

    :param saved: the fingerprint stored with the run.
    :param current: :func:`data_fingerprint` of the data this command loaded.
    :param options: the CLI option of each field, default :data:`FINGERPRINT_OPTIONS`.
    :raises ValueError: naming each field that differs, both values, and the fix
        ("resume with the original --seed 0 / --data-file X, or start a new run with --out").
    """
    options = {**FINGERPRINT_OPTIONS, **(options or {})}
    diffs: list[str] = []
    fixes: list[str] = []

    def fix(field: str, value: str) -> None:
        item = f"{options[field]} {value}"
        if item not in fixes:
            fixes.append(item)

    for field in ("dataset", "split_seed", "binarize", "split_sizes"):
        if field not in saved:
            continue
        old, new = saved.get(field), current.get(field)
        if old != new:
            diffs.append(f"{field}: the run used {json.dumps(old)}, now {json.dumps(new)}")
            if field == "split_sizes":
                continue  # follows from the data; the files fix names the option
            fix(field, str(old))
    if "files" in saved:
        old_files = list(saved.get("files") or [])
        new_files = list(current.get("files") or [])
        if sorted(str(f.get("sha256")) for f in old_files) != sorted(
            str(f.get("sha256")) for f in new_files
        ):
            diffs.append(
                f"files (content): the run used {_files_text(old_files)}, now "
                f"{_files_text(new_files)}"
            )
            if old_files:
                fix("files", " ".join(shlex.quote(str(f.get("path"))) for f in old_files))
    if any(d.startswith("split_sizes") for d in diffs) and not any(
        d.startswith("files") for d in diffs
    ):
        fix("files", "(the same data)")
    if not diffs:
        return
    original = " / ".join(fixes) if fixes else "the original data options"
    raise ValueError(
        "The data differ from those the run was trained on, so --resume would continue on "
        "other data: " + "; ".join(diffs) + f". Resume with the original {original}, or start "
        "a new run with --out."
    )
