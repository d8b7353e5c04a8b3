"""Connecting to FiftyOne's embedded database when several commands start at once.

Without ``database_uri``, FiftyOne runs its own ``mongod`` (a "db service"
process that keeps it alive while any client runs). Two processes that find
none start two, and the second ``mongod`` dies on the data directory's lock
(``DBPathInUse``); a process started while the previous one's ``mongod`` is
shutting down is refused by the exiting service and starts a second one, with
the same end. FiftyOne also attaches to *any* running db service of the user,
whatever its data directory.

:func:`connect` (called by the command line before anything else) lets one
process at a time (a file lock beside the data directory) attach to the
service of *this* data directory or, when there is none, wait for an exiting
one to be gone and start a fresh one; then it connects. With
``database_uri`` set, or a port inherited from a parent process, it just
connects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

logger = logging.getLogger(__name__)
SERVICE_ARGS = ["--51-service", "db", "--multi"]


def _dbpath(process):
    try:
        cmd = process.cmdline()
    except Exception:
        return None
    for i, arg in enumerate(cmd[:-1]):
        if arg == "--dbpath":
            return os.path.realpath(cmd[i + 1])
    return None


@contextlib.contextmanager
def _file_lock(path, timeout):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): FiftyOne's own start-up
        yield
        return
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout:.0f} s for {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mongod_port(service):
    import psutil

    import fiftyone.service.util as fosu

    for child in fosu.normalize_wrapper_process(service).children(recursive=True):
        try:
            for port in fosu.get_listening_tcp_ports(child):
                return port
        except psutil.Error:
            pass
    return None


def _wait_port(service, deadline):
    """The port of the service's mongod once it listens; None if the service died first."""
    import psutil

    while time.monotonic() < deadline:
        try:
            if not service.is_running() or service.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        port = _mongod_port(service)
        if port is not None:
            return port
        time.sleep(0.1)
    raise TimeoutError("the database service did not start listening in time")


def _start_or_attach(dbdir, timeout):
    """``(service handle, port)`` of a running db service of ``dbdir``."""
    import psutil

    import fiftyone.core.service as fos
    import fiftyone.service.util as fosu

    deadline = time.monotonic() + timeout
    while True:
        for proc in fosu.find_processes_by_args(SERVICE_ARGS):
            if _dbpath(proc) != dbdir:
                continue  # another data directory's service (FiftyOne would attach to it)
            try:
                reply = fosu.send_ipc_message(proc, ("register", os.getpid()))
            except Exception:
                reply = None
            if reply is True:
                port = _wait_port(proc, deadline)
                if port is not None:
                    svc = fos.DatabaseService.__new__(fos.DatabaseService)
                    svc._system, svc._disabled, svc.child, svc.attached = os.system, False, proc, True
                    return svc, port
            # exiting (it refuses new clients) or broken: wait until it and its mongod are gone
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        strays = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("mongod")
                  and _dbpath(p) == dbdir]
        for p in strays:  # a mongod on this directory without its service: let it finish shutting down
            with contextlib.suppress(psutil.Error):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not start or reach the database service of {dbdir}")

        class _Fresh(fos.DatabaseService):
            def start(self):  # a new service, not whichever one of the user's runs
                fos.Service.start(self)

        svc = _Fresh()
        port = _wait_port(svc.child, deadline)
        if port is not None:
            return svc, port
        logger.info("the database service exited while starting; retrying")
        time.sleep(0.2)


def connect(timeout: float = 180.0) -> None:
    """Connects FiftyOne to its database, safely when other processes start too."""
    import fiftyone as fo
    import fiftyone.core.odm.database as fod

    if (fo.config.database_uri or os.environ.get("FIFTYONE_PRIVATE_DATABASE_PORT")
            or os.environ.get("FIFTYONE_DISABLE_SERVICES") or fod._client is not None):
        fod.get_db_conn()
        return
    dbdir = os.path.realpath(os.path.expanduser(fo.config.database_dir))
    os.makedirs(dbdir, exist_ok=True)
    with _file_lock(dbdir.rstrip(os.sep) + ".noise_audit.lock", timeout):
        if fod._db_service is None:
            svc, port = _start_or_attach(dbdir, timeout)
            fod._db_service = svc  # kept for the life of the process (its __del__ detaches)
            os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"] = str(port)
        fod.get_db_conn()  # connects (and migrates a new database) before the next process may start
