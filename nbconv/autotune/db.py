"""The tuning database: measured winners in a JSON file, one section per fingerprint.

::

    {"schema": 1,
     "sections": {
       "<fingerprint id>": {
         "fingerprint": {...machine, libraries, kernel sources...},
         "updated_at": "2025-01-01T12:00:00+00:00",
         "records": {
           "<problem key>": {"problem": {...the key's fields...},
                             "winner": {"algorithm": "im2col", "device": "cpu", "params": {}},
                             "guess": "im2col",
                             "candidates": [{"algorithm": ..., "status": "ok", "median_s": ...,
                                             "min_s": ..., "spread": ..., "repeats": ...}, ...],
                             "measured_at": "2025-01-01T12:00:00+00:00"}}}}}

Only the section of this process's fingerprint (:mod:`.fingerprint`) is trusted; the others stay in
the file for the processes they belong to (at most :data:`MAX_SECTIONS`, least recently written
dropped first). Every write re-reads the file under an exclusive ``flock`` on a sidecar
``<file>.lock``, merges, and replaces the file atomically (temporary file in the same directory +
``os.replace``), so concurrent processes never lose each other's records and readers never see a
partial file (readers therefore take no lock). A corrupt, truncated or other-schema file is moved
aside (``<file>.bad-<time>``) with a warning; a location that cannot be written makes the database
live in memory for the rest of the process, with a warning.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import tempfile
import threading
import warnings

from .. import config
from .fingerprint import current_id, fingerprint

try:
    import fcntl
except ImportError:  # Windows: no inter-process lock (the atomic replace still prevents torn files)
    fcntl = None

SCHEMA = 1
MAX_SECTIONS = 16
MEMORY = config.MEMORY


class TuningDBWarning(RuntimeWarning):
    """The tuning database could not be used as asked (corrupt file, unwritable location)."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _empty():
    return {"schema": SCHEMA, "sections": {}}


def _problem(data):
    """Why ``data`` is not a usable database, or None."""
    if not isinstance(data, dict):
        return f"not a JSON object ({type(data).__name__})"
    if data.get("schema") != SCHEMA:
        return f"schema {data.get('schema')!r}, expected {SCHEMA}"
    sections = data.get("sections")
    if not isinstance(sections, dict):
        return "no 'sections' object"
    for fid, sec in sections.items():
        if not isinstance(sec, dict) or not isinstance(sec.get("records"), dict):
            return f"malformed section {fid!r}"
    return None


class _FileLock:
    def __init__(self, path):
        self.path, self.fd = path, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                os.close(self.fd)
                raise
        return self

    def __exit__(self, *exc):
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return False


class TuningDB:
    """One database file (or ``":memory:"``). Lookups read the file once and then whenever it has
    changed on disk (checked on each lookup, which dispatch only makes for a problem it has not
    decided yet); writes are read-merge-write under the file lock."""

    def __init__(self, path):
        path = os.fspath(path)
        self.path = path if path == MEMORY else os.path.abspath(os.path.expanduser(path))
        self.in_memory = self.path == MEMORY
        self.fallback = None  # why this database lives in memory although it has a path
        self._data = _empty()
        self._stat = None
        self._loaded = self.in_memory
        self._mutex = threading.RLock()

    def __repr__(self):
        state = " (in memory: " + self.fallback + ")" if self.fallback else ""
        return f"TuningDB({self.path!r}){state}"

    # -- reading ----------------------------------------------------------------------------------

    def _file_stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _parse(self):
        """(data, None), or (None, why the file is unusable); a missing file is empty."""
        try:
            with open(self.path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return _empty(), None
        except OSError as exc:
            return None, f"unreadable ({exc})"
        try:
            data = json.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"corrupt ({type(exc).__name__}: {str(exc)[:80]})"
        problem = _problem(data)
        return (data, None) if problem is None else (None, problem)

    def _read(self, locked):
        """The file's data, or an empty database when the file is unusable: moved aside with a
        warning when the caller holds the lock, else ignored with a warning."""
        data, problem = self._parse()
        if problem is None:
            return data
        if locked and not problem.startswith("unreadable"):
            aside = f"{self.path}.bad-{datetime.datetime.now().strftime('%Y%m%dT%H%M%S%f')}"
            try:
                os.replace(self.path, aside)
                self._warn(f"tuning database {self.path} is unusable: {problem}; moved it to "
                           f"{aside} and starting a new one")
                return _empty()
            except OSError as exc:
                problem += f"; could not move it aside: {exc}"
        self._warn(f"tuning database {self.path} is unusable: {problem}; ignoring it")
        return _empty()

    def _load(self):
        if self.in_memory:
            return
        st = self._file_stat()
        if self._loaded and st == self._stat:
            return
        with self._mutex:
            data, problem = self._parse()
            if problem is not None:
                # moved aside now, under the lock (another process may be replacing it)
                try:
                    with _FileLock(self.path + ".lock"):
                        data = self._read(locked=True)
                except OSError:
                    data = self._read(locked=False)
                st = self._file_stat()
            elif self._file_stat() != st:
                st = None  # replaced while we read it: read again next time
            self._data, self._stat, self._loaded = data, st, True

    def lookup(self, key, device="cpu"):
        """The record of ``key`` measured under this process's fingerprint, or None."""
        self._load()
        sec = self._data["sections"].get(current_id(device))
        if sec is None:
            return None
        rec = sec["records"].get(key)
        return rec if isinstance(rec, dict) else None

    def records(self, device="cpu", all_sections=False):
        """``(fingerprint id, trusted, key, record)`` for the trusted section (or all of them)."""
        self._load()
        mine = {current_id(device)}
        out = []
        for fid, sec in self._data["sections"].items():
            if all_sections or fid in mine:
                out.extend((fid, fid in mine, k, r) for k, r in sec["records"].items())
        return out

    def sections(self, device="cpu"):
        """fingerprint id -> {"fingerprint", "records" (count), "updated_at", "trusted"}."""
        self._load()
        mine = current_id(device)
        return {
            fid: {"fingerprint": sec.get("fingerprint"), "records": len(sec["records"]),
                  "updated_at": sec.get("updated_at"), "trusted": fid == mine}
            for fid, sec in self._data["sections"].items()
        }

    def export(self, device="cpu", all_sections=True):
        """A deep copy of the data (only the trusted section unless ``all_sections``)."""
        self._load()
        data = copy.deepcopy(self._data)
        if not all_sections:
            mine = current_id(device)
            data["sections"] = {k: v for k, v in data["sections"].items() if k == mine}
        return data

    # -- writing ----------------------------------------------------------------------------------

    def _update(self, mutate):
        """Apply ``mutate(data)`` to the freshly read file under the lock and write it back."""
        with self._mutex:
            if not self.in_memory:
                try:
                    self._update_file(mutate)
                    return
                except OSError as exc:
                    self.in_memory = True
                    self.fallback = str(exc)
                    self._warn(f"cannot write the tuning database {self.path} ({exc}); tuning "
                               f"results are kept in memory for the rest of this process")
            mutate(self._data)

    def _update_file(self, mutate):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        with _FileLock(self.path + ".lock"):
            data = self._read(locked=True)
            mutate(data)
            _prune(data)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(self.path) + ".",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    # no fsync: a database lost to a power cut is re-tuned, while an fsync per
                    # record would cost milliseconds on every write
                    json.dump(data, f, indent=1, sort_keys=True)
                    f.write("\n")
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared database from others
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self._data, self._stat, self._loaded = data, self._file_stat(), True

    def store(self, records, device="cpu"):
        """Add or replace records (``{key: record}``) in this fingerprint's section."""
        fp, fid, now = fingerprint(device), current_id(device), _now()

        def mutate(data):
            sec = data["sections"].setdefault(fid, {"records": {}})
            sec["fingerprint"] = fp
            sec["updated_at"] = now
            sec["records"].update(copy.deepcopy(records))

        self._update(mutate)

    def merge(self, other):
        """Merge another database (a path or its data) into this one: sections are united, and
        for a key present in both the newer measurement wins. Returns the number of records
        added or replaced."""
        if not isinstance(other, dict):
            with open(other) as f:
                other = json.load(f)
        problem = _problem(other)
        if problem is not None:
            raise ValueError(f"cannot merge: {problem}")
        counts = [0]

        def mutate(data):
            counts[0] = 0
            for fid, sec in other["sections"].items():
                mine = data["sections"].setdefault(fid, {"records": {}})
                for k in ("fingerprint", "updated_at"):
                    if k in sec and (k not in mine or str(sec.get("updated_at")) > str(mine.get("updated_at"))):
                        mine[k] = sec[k]
                for key, rec in sec["records"].items():
                    old = mine["records"].get(key)
                    if old is None or str(rec.get("measured_at", "")) > str(old.get("measured_at", "")):
                        mine["records"][key] = copy.deepcopy(rec)
                        counts[0] += 1

        self._update(mutate)
        return counts[0]

    def clear(self, device="cpu", all_sections=False):
        """Forget this fingerprint's records (or every section). Returns the number removed."""
        mine = current_id(device)
        counts = [0]

        def mutate(data):
            keep = {} if all_sections else {k: v for k, v in data["sections"].items() if k != mine}
            counts[0] = sum(len(v["records"]) for k, v in data["sections"].items() if k not in keep)
            data["sections"] = keep

        self._update(mutate)
        return counts[0]

    def _warn(self, message):
        warnings.warn("nbconv: " + message, TuningDBWarning, stacklevel=4)


def _prune(data):
    sections = data["sections"]
    if len(sections) > MAX_SECTIONS:
        newest = sorted(sections, key=lambda k: str(sections[k].get("updated_at", "")), reverse=True)
        for fid in newest[MAX_SECTIONS:]:
            del sections[fid]


# ---------------------------------------------------------------------------------------------
# The database dispatch uses (config.tuning_db), and who to tell when its contents change
# ---------------------------------------------------------------------------------------------

_current = None
_lock = threading.Lock()
_invalidate_hooks: list = []


def current():
    """The database of ``nbconv.config.tuning_db`` (one object per path, kept in memory)."""
    global _current
    path = config.get("tuning_db")
    db = _current
    if db is None or db.path != path:
        with _lock:
            db = _current
            if db is None or db.path != path:
                db = _current = TuningDB(path)
    return db


def open_db(db=None):
    """A TuningDB for ``db``: None -> :func:`current`, a TuningDB -> itself, a path -> the current
    one when it is the same file (sharing its memory), else a new one."""
    if isinstance(db, TuningDB):
        return db
    cur = current()
    if db is None:
        return cur
    path = os.fspath(db)
    path = path if path == MEMORY else os.path.abspath(os.path.expanduser(path))
    return cur if path == cur.path else TuningDB(path)


def on_invalidate(fn):
    """Call ``fn()`` when decisions derived from the database may be stale (dispatch's cache)."""
    _invalidate_hooks.append(fn)
    return fn


def invalidate():
    for fn in _invalidate_hooks:
        fn()


def _config_changed(name):
    global _current
    if name == "tuning_db":
        _current = None
        invalidate()


config.on_change(_config_changed)
