"""Running the repository's scripts as subprocesses of a study: resumable runs and their logs, small atomic file
writes, and the flags of a flagfile read the way train.py reads them. The scripts live in the repository's
scripts/ directory, so these tools work from a checkout (the editable install), not from an installed wheel."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def flags_of(flagfile, args):
    """{flag name: value} of `train.py --flagfile=FLAGFILE ARGS...` (every flag, defaults included), read by the
    command line's own parser (`TrainConfig.from_flagfile`, nested flagfiles relative to the repository)."""
    from tfadv.config import TrainConfig

    overrides = {}
    for arg in args:
        name, equals, value = arg[2:].partition("=")
        overrides[name[2:] if not equals and name.startswith("no") else name] = (
            value if equals else str(not name.startswith("no")).lower())
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return TrainConfig.from_flagfile(flagfile, **overrides).flat()
    finally:
        os.chdir(cwd)


def write_markdown(path, text):
    """Prints `text` and, with a `path`, writes it there too."""
    print(text)
    if path:
        with open(path, "w") as handle:
            handle.write(text + "\n")


def run(args, log_path, done_path):
    """Runs `python args...` from the repository unless `done_path` exists (a finished run is skipped, an
    interrupted one resumes: train.py resumes from the run directory's checkpoints). Returns (exit code, s)."""
    if os.path.exists(done_path):
        return 0, 0.0
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n$ python {' '.join(args)}\n")
        log.flush()
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return code, time.time() - start


def run_or_exit(script, *args, log):
    """Runs `python scripts/SCRIPT args...` from the current directory, its output into `log` (replaced); a
    failure ends the calling script with a one-line message naming the log (exit code 1)."""
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, os.path.join(ROOT, "scripts", script), *args], stdout=handle,
                               stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"{script} {' '.join(args)} failed with exit code {code}; see {log}")


def last_lines(path, count=3):
    """The last `count` non-empty lines of a log without TensorFlow's C++ chatter, joined by " / "."""
    with open(path) as handle:
        lines = [line.rstrip() for line in handle if line.strip() and not line.startswith(("I0000", "W0000"))]
    return " / ".join(lines[-count:])


def write_json(path, value):
    """Writes `value` as JSON atomically (a temporary file, then a rename)."""
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle, indent=2)
    os.replace(path + ".tmp", path)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)
