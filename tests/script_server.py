"""Runs tfadv's command-line scripts for the tests without paying TensorFlow's import for every run.

A script run as `python scripts/x.py` spends ~4 s of CPU importing TensorFlow, Keras and tfadv before it reads
its first flag, and the suite runs scripts well over a hundred times. Here one server process per test process
imports them once, runs no TensorFlow op (so no TensorFlow thread pool, device or session exists yet: forking is
safe, and the server checks that it is still single-threaded), then forks one child per request. The child takes
the request's argv, environment and working directory, points file descriptors 0/1/2 at /dev/null and two files,
runs the script as `__main__` (as `python script` would: same sys.argv, sys.path[0] = the script's directory) and
exits with the script's exit code. Everything a script does after its imports -- flag parsing, validation, device
set-up, training, exit codes, what it prints -- happens in the child exactly as in a fresh interpreter.

What this cannot show is start-up itself (TensorFlow's import-time log lines, environment variables read at
import): the tests of that (tests/test_first_run.py) run real interpreters through `run_fresh`.

    result = run_script("train.py", "--flagfile=flags/digits.cfg", ...)   # subprocess.CompletedProcess
"""

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
# what every script imports; imported by the server once, before any fork
PRELOAD = ("tensorflow", "keras", "absl.app", "absl.flags", "numpy", "sklearn.datasets", "matplotlib.pyplot",
           "tensorflow_datasets", "tfadv", "tfadv.cli", "tfadv.config", "tfadv.data", "tfadv.experiment",
           "tfadv.evaluation", "tfadv.evaluation.api", "tfadv.export", "tfadv.runs", "tfadv.cossat",
           "tfadv.cossat_build", "tfadv.training", "tfadv.attacks", "tfadv.models", "tfadv.fading_gaussian")


def default_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_fresh(script, *args, env=None, cwd=ROOT, timeout=600):
    """`python scripts/<script> args` in a new interpreter (for tests of start-up behaviour)."""
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], cwd=cwd,
                          env=env if env is not None else default_env(), capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------------------------------------
# the server (runs in its own process: `python tests/script_server.py`)


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1


def _child(request):
    """In the forked child: become the script. Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the script's own subprocesses must be waitable
        os.setpgid(0, 0)  # a timeout kills the script and anything it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile as tempfile_module

        tempfile_module.tempdir = None  # the request's TMPDIR, as a fresh interpreter would read it
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        script = request["script"]
        sys.argv = [script, *request["args"]]
        sys.path[0] = os.path.dirname(script)
        import runpy

        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:  # what the interpreter does with sys.exit(value)
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and exit code 1, as python does
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(request["status"] + ".tmp", "w") as handle:
                handle.write(str(code))
            os.replace(request["status"] + ".tmp", request["status"])
        finally:
            os._exit(code & 0xFF)


def serve():
    from tfadv import cli

    cli.quiet_tensorflow()  # no import chatter from the server itself
    for name in PRELOAD:
        __import__(name)
    threads = _native_threads()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; status comes by file
    reply = sys.stdout
    reply.write(json.dumps({"ready": True, "threads": threads}) + "\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()


# ----------------------------------------------------------------------------------------------------------
# the client (in the test process)


class ScriptServer:
    def __init__(self):
        self._lock = threading.Lock()
        # numpy's and scipy's OpenBLAS start a thread pool on import unless told not to: the server stays
        # single-threaded so that fork copies a consistent process
        env = default_env(OPENBLAS_NUM_THREADS="1")
        self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = json.loads(self._process.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError("the script server did not start")
        if ready["threads"] != 1:  # forking a multi-threaded process is not safe: fall back to real interpreters
            raise RuntimeError(f"the script server has {ready['threads']} threads after its imports")

    def start(self, request) -> int:
        with self._lock:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            return json.loads(self._process.stdout.readline())["pid"]

    def close(self):
        try:
            self._process.stdin.close()
            self._process.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self._process.kill()


_server = None
_server_lock = threading.Lock()


def _get_server():
    global _server
    with _server_lock:
        if _server is None:
            _server = ScriptServer()
            atexit.register(_server.close)
        return _server


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ScriptProcess:
    """A script started by the server: like subprocess.Popen, `pid`, `poll()`, `wait(timeout)`, `kill()` (SIGKILL
    to its process group) and `result()` (a CompletedProcess with its output)."""

    def __init__(self, script, args, env=None, cwd=ROOT):
        self.path = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
        self.args = [str(a) for a in args]
        self._scratch = tempfile.TemporaryDirectory(prefix="script_")
        self._files = {name: os.path.join(self._scratch.name, name) for name in ("stdout", "stderr", "status")}
        request = {"script": self.path, "args": self.args, "cwd": str(cwd),
                   "env": env if env is not None else default_env(), **self._files}
        self.pid = _get_server().start(request)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            if os.path.exists(self._files["status"]):
                with open(self._files["status"]) as handle:
                    code = int(handle.read())
                while _alive(self.pid):  # the status is written just before _exit: let the process end
                    time.sleep(0.01)
                self.returncode = code
            elif not _alive(self.pid):  # died without reporting: killed by a signal (SIGKILL, a native crash)
                if not os.path.exists(self._files["status"]):
                    self.returncode = -signal.SIGKILL
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise subprocess.TimeoutExpired([self.path, *self.args], timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _alive(self.pid):
            time.sleep(0.01)

    def result(self) -> subprocess.CompletedProcess:
        outputs = {}
        for name in ("stdout", "stderr"):
            with open(self._files[name], errors="replace") as handle:
                outputs[name] = handle.read()
        self._scratch.cleanup()
        return subprocess.CompletedProcess([sys.executable, self.path, *self.args], self.returncode,
                                           outputs["stdout"], outputs["stderr"])


def start_script(script, *args, env=None, cwd=ROOT) -> ScriptProcess:
    """Starts `python scripts/<script> args` (or an absolute script path) and returns at once."""
    return ScriptProcess(script, args, env, cwd)


def run_script(script, *args, env=None, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    """As `subprocess.run([python, scripts/<script>, *args], capture_output=True, text=True)`: a CompletedProcess;
    TimeoutExpired after `timeout` s (the script's process group killed)."""
    process = ScriptProcess(script, args, env, cwd)
    try:
        process.wait(timeout)
    finally:
        if process.returncode is None:
            process.kill()
    return process.result()


if __name__ == "__main__":
    serve()
