"""The cluster of a multi-worker run, without TensorFlow: `TF_CONFIG` parsed into a `Cluster`, free local ports,
a local cluster's `TF_CONFIG` values, and starting / stopping one process per worker (`launch`, `stop`) for tests,
benchmarks and the parity harness (`tfadv.parity`). `tfadv.distribute` builds the strategy from it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
from typing import Optional

TF_CONFIG = "TF_CONFIG"
_TASK_TYPES = ("chief", "worker")

@dataclasses.dataclass(frozen=True)
class Cluster:
    """What TF_CONFIG says: the task addresses by type, and this process's task."""

    tasks: dict  # {"chief": [...], "worker": [...]}
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.tasks.get(kind, ())) for kind in _TASK_TYPES)

    @property
    def is_chief(self) -> bool:
        """The task that writes the run directory: `chief` if the cluster has one, else worker 0 (TF's rule)."""
        if "chief" in self.tasks:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def parse_tf_config(text: Optional[str]) -> Cluster:
    """The Cluster of a TF_CONFIG value; ValueError (a sentence without the flag name) if missing or malformed."""
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text or not text.strip():
        raise ValueError(f"multi_worker needs the {TF_CONFIG} environment variable (the cluster and this task), "
                         f"{example}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({error.msg} at character {error.pos}); {example}") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) or not isinstance(value.get("task"),
                                                                                                   dict):
        raise ValueError(f"{TF_CONFIG} needs a 'cluster' object and a 'task' object; {example}")
    tasks = {}
    for kind, addresses in value["cluster"].items():
        if kind not in _TASK_TYPES:
            raise ValueError(f"{TF_CONFIG}: cluster task type {kind!r} is not supported (only chief and worker: "
                             "MultiWorkerMirroredStrategy has no parameter servers)")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and _is_address(a) for a in addresses)):
            raise ValueError(f"{TF_CONFIG}: cluster[{kind!r}] must be a non-empty list of 'host:port' strings, got "
                             f"{addresses!r}")
        tasks[kind] = list(addresses)
    if "worker" not in tasks and "chief" not in tasks:
        raise ValueError(f"{TF_CONFIG}: the cluster lists no worker; {example}")
    if len(tasks.get("chief", ())) > 1:
        raise ValueError(f"{TF_CONFIG}: a cluster has at most one chief, got {len(tasks['chief'])}")
    task_type, index = value["task"].get("type"), value["task"].get("index", 0)
    if task_type not in tasks:
        raise ValueError(f"{TF_CONFIG}: task type {task_type!r} is not in the cluster ({', '.join(tasks)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tasks[task_type]):
        raise ValueError(f"{TF_CONFIG}: task index {index!r} is not one of the {len(tasks[task_type])} "
                         f"{task_type} task(s)")
    return Cluster(tasks, task_type, index)


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def cluster_from_environment(environ=None) -> Cluster:
    return parse_tf_config((os.environ if environ is None else environ).get(TF_CONFIG))



def free_ports(count: int) -> list:
    """`count` TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(num_workers: int) -> list:
    """One TF_CONFIG value per worker of a cluster on 127.0.0.1 with free ports (worker 0 is the chief)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(num_workers)]



def _environment(extra: Optional[dict] = None) -> dict:
    """This environment with this tfadv first on PYTHONPATH, TensorFlow's C++ log quiet unless set, no
    inherited TF_CONFIG, and `extra` on top."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop(TF_CONFIG, None)
    env.update(extra or {})
    return env


def launch(args: list, num_workers: int = 0, env: Optional[dict] = None, **popen) -> list:
    """Starts `args` (a command list) once, or once per worker of a new local cluster with TF_CONFIG set;
    each in its own process group (stop them with `stop`)."""
    configs = local_cluster(num_workers) if num_workers else [None]
    return [subprocess.Popen(args, env=_environment({**(env or {}), **({TF_CONFIG: c} if c else {})}),
                             start_new_session=True, **popen) for c in configs]


def stop(processes):
    """Kills each process's group (started by `launch`) and reaps it."""
    import signal

    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(Exception):
            process.wait(timeout=30)
