"""`make ui`: serve the MLflow UI of the store and print, for each experiment in it, the
address of its runs in pixelexp's chart view (bits/dim by epoch and by hour, samples,
settings).

The server (`mlflow ui`, which starts web workers and a job runner of its own) runs in
a process group of its own; this process stops the whole group when it ends, however
it ends: Ctrl-C, SIGTERM (as `make` passes it on when it is stopped), SIGHUP, or the end
of the process that started it (`make` stopped by a SIGINT or SIGHUP to its process id,
which it does not pass on); and the server gets a SIGTERM if this process is killed. So
stopping `make ui`, however it is done, frees the port. With a tracking server (`MLFLOW_TRACKING_URI=http://...`)
there is nothing to serve: the addresses on that server are printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pixelexp.console import log
from pixelexp.errors import UserError
from pixelexp.runs import tracking
from pixelexp.runs.rundir import runs_root


def mlflow_command() -> list[str]:
    """`mlflow` beside this Python (the venv's), else `python -m mlflow`."""
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlflow"]


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use (another `make ui`?); stop that server, "
                            f"or serve on another port: make ui PORT={port + 1}") from None


def wait_until_up(address: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the MLflow UI server stopped at start (exit code {proc.returncode})")
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"the MLflow UI server did not answer on {address} within {timeout:.0f} s")


def print_views(uri: str, address: str) -> list[str]:
    """One line per experiment of the store: its name and the address of its chart view."""
    lines = [f"  {name:<24} {tracking.ui.view_url(address, eid)}"
             for eid, name in tracking.experiments(uri) if name != "Default"]
    log.info(f"experiments in {uri} (open one: its runs compared by epoch and by hour):")
    for line in lines or ["  (none yet: run `make experiment` or `make sweep` first)"]:
        log.info(line)
    return lines


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the server and everything it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may not be yet
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def _stop_with_parent() -> None:
    """In the server's process (Linux): a SIGTERM when this process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(host: str = "127.0.0.1", port: int | None = None) -> int:
    """Serve the UI of the store until stopped -> 0."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        print_views(uri, tracking.ui_address())
        log.info(f"the tracking server {uri} serves its own UI; nothing to start")
        return 0
    tracking.open_client(uri)  # a one-line error for a missing or damaged store
    port = port or int(os.environ.get("PIXELEXP_UI_PORT") or 5000)
    check_port_free(host, port)
    address = f"http://{host}:{port}"
    cmd = [*mlflow_command(), "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    server_log = runs_root() / "mlflow-ui.log"
    server_log.parent.mkdir(parents=True, exist_ok=True)
    with server_log.open("ab") as out:  # the server's own lines (many, and warnings) go there
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_stop_with_parent)
    try:
        try:
            wait_until_up(address, proc)
        except UserError as e:
            tail = server_log.read_text(errors="replace").splitlines()[-5:]
            raise UserError(f"{e} (last lines of {server_log}: {' | '.join(tail)})") from None
        log.info(f"MLflow UI on {address} (store {uri}; its log {server_log}); "
                 f"Ctrl-C or stopping `make ui` stops it")
        print_views(uri, address)
        sys.stdout.flush()
        parent = os.getppid()
        while proc.poll() is None:
            if os.getppid() != parent:  # who started us is gone (make stopped by SIGINT or SIGKILL)
                raise KeyboardInterrupt
            time.sleep(0.5)
        raise UserError(f"the MLflow UI server stopped (exit code {proc.returncode}); see {server_log}")
    except KeyboardInterrupt:
        log.info("stopping the MLflow UI server")
        return 0
    finally:
        stop_group(proc)
