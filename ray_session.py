"""Ray for ``--engine ray``: start a local instance or join a cluster, keep Ray's own output off the user's
terminal, check that every node reaches what the work needs, and turn what goes wrong inside Ray into fer's
one-line errors and exit statuses.

Both stages use it (`fer extract` and `fer data faces` through fer.extract.ray_engine, `fer sweep` through
fer.train.ray_sweep), so it lives at the top of the package beside cli.py; it imports nothing of fer but
fer.cache.errors, and ``ray`` only when a session starts, so fer without the ``ray`` extra works.

- Without ``--ray-address`` and without RAY_ADDRESS a local instance is started here (dashboard off) and
  stopped when the session ends, also after an error or Ctrl-C: no Ray process outlives the command. With an
  address the cluster is joined and left running. A session inside a process that already holds one (a
  notebook, the tests) uses that one and leaves it as it was.
- What reaches the terminal is fer's: Ray's logging is set to errors only and goes nowhere visible, Ray Data's
  progress bars and execution logs are off, workers' output stays in Ray's session logs (``log_to_driver``
  off), the native (C++) log lines of this process go to a file (kept, and named in the error, when the run
  fails), and Ray's notices about dead workers and retried tasks are collected (``RaySession.notices``) for
  the run's summary instead of being printed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer.cache.errors import FerEnvError, FerError

INSTALL = "pip install 'fer-cache[ray]'"
"""How to get Ray (the ``ray`` extra: ``ray[data]``)."""
ENGINES = ("process", "ray")
"""``--engine``: process = this process (with its decoding workers; one per rank under torchrun or --shard);
ray = Ray, on a local instance or a cluster."""
PROBE_TIMEOUT_S = 300.0
"""How long the reachability probe waits for every node (a node's first worker process can take a while)."""


def import_ray() -> Any:
    """The ``ray`` module; FerEnvError saying how to install it when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra is ray[data]; a bare ray lacks it
    except ImportError as e:
        raise FerEnvError(f"--engine ray needs Ray Data, which is not installed ({e}): {INSTALL}") from None
    return ray


def wants_ray(engine: str | None, ray_only: dict[str, Any]) -> bool:
    """True for ``--engine ray``, False for ``process`` (the default); FerError for another name, or for
    options that only Ray uses (``ray_only``: {flag: value}) given with ``process``."""
    name = (engine or "process").strip().lower()
    if name not in ENGINES:
        raise FerError(f"unknown --engine {engine!r}; choose {' or '.join(ENGINES)}")
    given = [flag for flag, value in ray_only.items() if value]
    if name == "process" and given:
        many = len(given) > 1
        raise FerError(f"{' and '.join(given)} {'go' if many else 'goes'} with --engine ray; add it, or "
                       f"leave {'them' if many else 'it'} out")
    return name == "ray"


@dataclass
class RaySession:
    """The Ray instance a run uses."""

    address: str
    """``local`` (an instance started by this process) or the cluster's address."""
    started: bool
    """This process started the instance (and stops it at the end)."""
    notices: list[str] = field(default_factory=list)
    """Ray's messages about dead workers and retried tasks during the run."""
    native_log: Path | None = None
    """Where this process's native Ray log lines go."""
    keep_log: bool = False
    """An error of Ray's named the log: it stays when the session ends."""

    def resources(self) -> dict[str, float]:
        """The cluster's total resources (CPU, GPU, memory, ...)."""
        return dict(import_ray().cluster_resources())

    @property
    def cpus(self) -> float:
        return float(self.resources().get("CPU", 0.0))

    @property
    def gpus(self) -> float:
        return float(self.resources().get("GPU", 0.0))

    @property
    def retries(self) -> int:
        """Tasks Ray ran again after their worker died."""
        return sum("will be retried" in n or "retries remaining" in n for n in self.notices)

    def describe(self) -> str:
        """E.g. ``local Ray instance (2 CPUs)``, ``Ray cluster at HEAD:6379 (3 nodes, 48 CPUs, 4 GPUs)``."""
        ray = import_ray()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        what = "local Ray instance" if self.address == "local" else f"Ray cluster at {self.address}"
        many = f"{nodes} nodes, " if nodes > 1 else ""
        return f"{what} ({many}{self.cpus:g} CPUs{gpus})"

    def error(self, e: BaseException, doing: str) -> FerError:
        """The one-line fer error for an exception that came out of Ray while ``doing`` something: a FerError
        raised inside Ray as it was, anything else as a FerEnvError naming where Ray's logs are."""
        inner = fer_error_in(e)
        if inner is not None:
            return inner
        self.keep_log = True
        logs = f"; Ray's logs: {self.log_dir()}" if self.log_dir() else ""
        return FerEnvError(f"Ray failed while {doing}: {first_line(e)}{logs}")

    def log_dir(self) -> str:
        """Ray's session log folder on this machine ('' when unknown)."""
        with contextlib.suppress(Exception):
            node = importlib.import_module("ray._private.worker")._global_node
            if node is not None:
                return str(Path(node.get_session_dir_path()) / "logs")
        return str(self.native_log or "")


def fer_error_in(e: BaseException) -> FerError | None:
    """A FerError raised inside a Ray task or actor, found along ``e``'s causes (Ray wraps it), else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, FerError):
            return cur
        todo += [getattr(cur, "cause", None), cur.__cause__, cur.__context__]
    return None


def first_line(e: BaseException, limit: int = 240) -> str:
    """The first line of ``e``'s message that says something (Ray's begin with the worker's name)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("ray::")]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[RaySession]:
    """A Ray instance for one run: ``address`` (or RAY_ADDRESS) joins a cluster, else a local one is started
    and stopped at the end. FerEnvError when the cluster cannot be reached."""
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():  # the caller's own session (a notebook, the tests): use it, leave it running
        session = RaySession(address=address or "local", started=False)
        with _quiet(session):
            yield session
        return
    if address:
        token_auth_for_join()
    fd, log = tempfile.mkstemp(prefix=f"fer-ray-{os.getpid()}-", suffix=".log")
    os.close(fd)
    session = RaySession(address=address or "local", started=True, native_log=Path(log))
    try:
        with _native_logs_to(Path(log)):
            try:
                local = {} if address else {"num_cpus": local_cpus()}
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, **local)
            except Exception as e:  # noqa: BLE001 - any failure to start or join is said in one line
                session.keep_log = True
                where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
                raise FerEnvError(f"cannot {where}: {first_line(e)}{_init_hint(address, log)} (Ray's log of "
                                  f"this process: {log})") from None
            try:
                with _quiet(session):
                    yield session
            finally:
                with contextlib.suppress(Exception):
                    ray.shutdown()
    finally:
        if not session.keep_log:
            Path(log).unlink(missing_ok=True)


def _init_hint(address: str | None, log: str) -> str:
    """What to do when ``ray.init`` failed (its native log is at ``log``)."""
    if not address:
        return ""
    if "auth" in _log_text(log).lower():
        return ("; the cluster asks for its authentication token: copy the head node's ~/.ray/auth_token "
                "to this machine, or set RAY_AUTH_TOKEN to it, and RAY_AUTH_MODE=token")
    return ("; start the cluster with `ray start --head` on one machine and `ray start "
            "--address=HEAD:6379` on the others, or leave --ray-address and RAY_ADDRESS unset for a local "
            "instance")


def local_cpus() -> int:
    """CPUs of a local instance: the cores this process may use (its affinity mask), and at least 2, so one
    model actor and one decoding task always fit (on one core they share it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(2, cores)


def token_auth_for_join() -> None:
    """Ray clusters started by `ray start` or ``ray.init`` ask for an authentication token, which a driver
    joining one sends only in token mode: turn that on when a token is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and RAY_AUTH_MODE chooses nothing, through Ray's own helper (as
    its command line does). A driver in token mode joins a cluster without authentication as well."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    with contextlib.suppress(Exception):  # a Ray without it: RAY_AUTH_MODE=token does the same by hand
        setup = importlib.import_module("ray._private.authentication.authentication_token_setup")
        logging.getLogger("ray").setLevel(logging.ERROR)  # it says so at warning level
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _log_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")[-20000:]
    except OSError:
        return ""


@contextlib.contextmanager
def _quiet(session: RaySession) -> Iterator[None]:
    """Ray's logging and Ray Data's progress bars off; Ray's notices into ``session.notices``."""
    from ray.data import DataContext

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray prints its notices about dead workers and retried tasks through this function of its worker
    # module (a private name, so only when it is there); they belong in the run's summary, not on stdout
    worker = importlib.import_module("ray._private.worker")
    printer = getattr(worker, "print_to_stdstream", None)

    def collect(data: dict, *_: Any, **__: Any) -> None:
        session.notices.extend(str(line) for line in data.get("lines", []))

    if printer is not None:
        worker.print_to_stdstream = collect
    try:
        yield
    finally:
        if printer is not None:
            worker.print_to_stdstream = printer


@contextlib.contextmanager
def _native_logs_to(path: Path) -> Iterator[None]:
    """Send what Ray's native code writes to this process's stderr (file descriptor 2) to ``path``, while
    Python's own ``sys.stderr`` (fer's progress bar and messages) still reaches the terminal."""
    try:
        real = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured): nothing native to hide
        yield
        return
    if real != 2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, 2)
    os.close(target)
    before = sys.stderr
    sys.stderr = open(os.dup(saved), "w", buffering=1, encoding=getattr(before, "encoding", None) or "utf-8",
                      errors="backslashreplace")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stderr.close()
        sys.stderr = before
        os.dup2(saved, 2)
        os.close(saved)


# ---------------------------------------------------------------- what every node must reach
def _probe(paths: Sequence[str]) -> tuple[str, list[str]]:
    """Runs on one node: fer's version there, and which of ``paths`` it cannot see."""
    import fer

    return fer.__version__, [p for p in paths if not os.path.exists(p)]


def check_nodes(paths: dict[str, str], session: RaySession) -> int:
    """Before any work is scheduled: every live node with CPUs runs fer (the same version as here) and sees
    each of ``paths`` ({what: path}, e.g. {"the dataset": root}); FerEnvError naming the first node and path
    that fails. Returns the number of nodes checked."""
    import fer

    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0, max_retries=1)(_probe)
    wanted = [str(p) for p in paths.values()]
    refs = [(n, probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
             .remote(wanted)) for n in nodes]
    for node, ref in refs:
        where = f"Ray node {node.get('NodeManagerAddress', '?')}"
        try:
            version, missing = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - fer missing there, the node lost, a timeout: one line
            raise FerEnvError(f"{where} cannot run fer's tasks ({first_line(e)}): install fer with its ray "
                              f"extra ({INSTALL}), the same version as here ({fer.__version__}), on every "
                              "node") from None
        if version != fer.__version__:
            raise FerEnvError(f"{where} runs fer {version}, this machine {fer.__version__}: install the "
                              "same fer on every node")
        if missing:
            what = next(k for k, v in paths.items() if str(v) == missing[0])
            raise FerEnvError(f"{where} cannot see {what} at {missing[0]}: every node must reach it at the "
                              "same path (a shared filesystem), or run without --engine ray")
    return len(nodes)
