"""The cluster of a multi-worker run, without TensorFlow: `TF_CONFIG` parsed into a `Cluster`, free local ports,
a local cluster's `TF_CONFIG` values, and starting / stopping one process per worker (`launch`, `stop`) for tests,
benchmarks and the parity harness (`tfadv.parity`). `tfadv.distribute` builds the strategy from it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Callable, Optional

from tfadv.errors import RunError

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



def _host_port(address: str):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}


def _stopped(signum) -> RunError:
    return RunError(f"stopped by {_SIGNAL_NAMES[signum]} while waiting for the other workers")


class _Stop:
    """The wait's SIGTERM/SIGINT handler: it only records the signal, and the wait's loop raises between two polls.
    Raising in the handler itself put the RunError wherever the signal landed, e.g. inside the 'idna' codec of a
    host-name lookup, whose machinery rewrote it as "encoding with 'idna' codec failed (RunError: ...)"."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = self.signum or signum

    def check(self):
        if self.signum:
            raise _stopped(self.signum)


def wait_for_peers(cluster: Cluster, timeout: float, log: Callable = print, poll: float = 0.5) -> float:
    """Waits, in Python, until every other task of `cluster` accepts a TCP connection on its TF_CONFIG address,
    while this task accepts them on its own (and closes them at once); returns the seconds waited.

    TensorFlow's own handshake (MultiWorkerMirroredStrategy) blocks in C++ holding the GIL and replaces the
    SIGTERM handler, so a worker whose peers never came could only be stopped from outside by a signal to its
    process group (tfadv.distribute's watchdog). Waiting here first, every signal works as in any Python
    program: Ctrl-C or SIGTERM to the worker's PID (what a container runtime sends) raises RunError("stopped by
    SIGTERM ..."), and after `timeout` seconds a RunError says which workers did not come. Once all answer,
    TF's handshake is short. A worker that already left this wait for TF's handshake answers through TF's
    server; one that did not yet, through this wait's socket. Says every 30 s how long it has waited."""
    others = [address for kind, addresses in cluster.tasks.items() for index, address in enumerate(addresses)
              if (kind, index) != (cluster.task_type, cluster.task_index)]
    if not others:
        return 0.0
    port = _host_port(cluster.tasks[cluster.task_type][cluster.task_index])[1]
    try:  # IPv6 and IPv4 on one socket where the host has IPv6 (TF_CONFIG may name "[::1]:p" or IPv6-only hosts)
        listener = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    except (OSError, ValueError):
        listener = None
    try:
        listener = listener or socket.create_server(("", port))
        listener.listen(16)
        listener.setblocking(False)
    except OSError as error:
        if listener:
            listener.close()
        raise RunError(f"--distribute=multi_worker: this worker's address in TF_CONFIG "
                       f"({cluster.tasks[cluster.task_type][cluster.task_index]}) cannot be listened on: "
                       f"{error.strerror}") from None
    main = threading.current_thread() is threading.main_thread()
    stop = _Stop()
    previous = {signum: signal.signal(signum, stop) for signum in _SIGNAL_NAMES} if main else {}
    start = said = time.monotonic()
    pending = list(others)
    try:
        while pending:
            stop.check()
            with contextlib.suppress(BlockingIOError, OSError):
                while True:
                    connection = listener.accept()[0]
                    # closed with a reset, not a FIN: no TIME_WAIT left on this port for TF's server to meet
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    connection.close()
            for address in list(pending):
                try:
                    socket.create_connection(_host_port(address), timeout=min(1.0, poll)).close()
                    pending.remove(address)
                except OSError:
                    pass
            waited = time.monotonic() - start
            if pending and waited >= timeout:
                raise RunError(f"--distribute=multi_worker: the other worker(s) of TF_CONFIG ({', '.join(pending)}) "
                               f"did not join within {timeout:g} s (--cluster_timeout); start the same command on "
                               "every worker")
            if pending and time.monotonic() - said >= 30:
                said = time.monotonic()
                log(f"multi_worker: still waiting for {', '.join(pending)} after {waited:.0f} s")
            if pending:
                time.sleep(poll)
        stop.check()
    except KeyboardInterrupt:  # a SIGINT handler other than ours (not the main thread)
        raise _stopped(signal.SIGINT) from None
    finally:
        listener.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return time.monotonic() - start


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
