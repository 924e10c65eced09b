"""`make lab` starts JupyterLab (as root too), its REST API lists the notebooks, and a kernel runs a cell."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket  # websocket-client, a dependency of jupyter_server (the [lab] extra)

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 45


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base, token, path, method="GET", body=None):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"},
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _execute(base, token, kernel_id, code):
    """Run `code` in the kernel over its websocket (Jupyter messaging, JSON framing); its stdout and status."""
    ws = websocket.create_connection(f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {token}"], timeout=30)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                       "username": "test", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        # The reply comes on the shell channel, the printed text on iopub: the two may arrive in either order.
        # iopub's "idle" status for our request comes after all of its output, so wait for both.
        stdout, status, idle = "", None, False
        while status is None or not idle:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                stdout += msg["content"]["text"]
            elif msg["msg_type"] == "execute_reply":
                status = msg["content"]["status"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return stdout, status
    finally:
        ws.close()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_serves_the_notebooks_and_runs_a_cell(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    # port_retries=0: if another process took the port meanwhile, fail instead of serving on the next one.
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    # -o: take the installed venv as up to date; PY: the interpreter running this test (the venv's).
    cmd = ["make", "-s", "-o", ".venv/.installed", "lab", f"PY={sys.executable}", f"LAB_ARGS={lab_args}"]
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert server.poll() is None, f"make lab exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                _api(base, token, "/api/status")
                break
            except urllib.error.HTTPError:
                raise  # a server answered, and refused: not ours, or the token did not reach it
            except OSError:
                assert time.monotonic() < deadline, f"no server after {STARTUP_S} s:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)

        listing = _api(base, token, "/api/contents/")
        names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        expected = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
        assert expected and expected <= names, (expected, names)
        notebook = _api(base, token, "/api/contents/" + sorted(expected)[0])
        assert notebook["content"]["cells"][0]["cell_type"] == "markdown"

        # As JupyterLab opens a notebook: a session, whose kernel runs in the notebook's folder.
        session = _api(base, token, "/api/sessions", method="POST",
                       body={"path": sorted(expected)[0], "type": "notebook", "kernel": {"name": "python3"}})
        stdout, status = _execute(base, token, session["kernel"]["id"],
                                  "import os, openrs_nb\nprint(6 * 7, os.path.basename(os.getcwd()))")
        assert (status, stdout.split()) == ("ok", ["42", "notebooks"]), (status, stdout)
        _api(base, token, f"/api/sessions/{session['id']}", method="DELETE")

        _api(base, token, "/api/shutdown", method="POST")
        server.wait(timeout=20)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the session we started: make and the server under it
            server.wait(timeout=10)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_allows_root_only_for_root():
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "-m jupyterlab --notebook-dir=notebooks" in dry.stdout, dry.stdout + dry.stderr
    assert ("--allow-root" in dry.stdout) == (os.geteuid() == 0), dry.stdout
