"""Run a function on untrusted input in a child process with CPU-time, memory and wall-clock limits.

Whatever the input does to the code that reads it (a crash in C or Rust code, a loop, an allocation
without end), it does it in a child that has a CPU-time and a memory limit and is killed when it
outlives its wall-clock allowance. The target is a function named "module:function" that takes
(arguments, bytes) and returns a JSON-ready dict. JSON, not pickle, comes back: a child that ran
hostile input is not trusted to send code.

A single-threaded process forks the child (it starts at once, with every module imported); a
process with threads starts a fresh interpreter (`subprocess`), which imports the target, then sets
its own limits (so imports do not count against them).
"""
from __future__ import annotations

import faulthandler
import gc
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("loyalty.isolation")

# Most children at once (a rules directory holds several versions; each is tried in its own child).
PARALLEL = max(1, min(4, os.cpu_count() or 1))
# What a child may write (its progress and its answer; a rule file's problems are well under this).
OUTPUT_BYTES = 32 * 1024 * 1024
# The last line a failed child wrote to its stderr, as quoted in a refusal.
SUMMARY_CHARS = 200

_CHILD_CODE = "from service.isolation import child_main; child_main()"
START_METHODS = ("auto", "fork", "spawn")
# Ways a child can fail that say nothing about its input: the same input may well pass another time.
TRANSIENT_KINDS = frozenset({"start", "wall"})


class TrialRefused(Exception):
    """The child crashed, reached a limit, raised, or could not start: `reason` says which, for a person.

    `kind` is "crash" (a signal or an abnormal exit), "cpu" or "memory" (its limit), "wall" (killed at
    the wall-clock limit: the machine may just be loaded), "error" (an exception in the target) or
    "start" (no child could be started: nothing is known about the input).
    """

    def __init__(self, reason: str, kind: str):
        self.reason, self.kind = reason, kind
        super().__init__(reason)

    @property
    def transient(self) -> bool:
        """True when the failure may be the machine's, not the input's: worth trying again later."""
        return self.kind in TRANSIENT_KINDS


@dataclass(frozen=True)
class Limits:
    """The limits of one child: CPU seconds and MiB of memory above what it uses after imports, wall seconds."""

    cpu_seconds: float
    memory_mib: int
    wall_seconds: float


@dataclass(frozen=True)
class Request:
    """One target to run in a child: "module:function", its JSON arguments, its bytes, and what it does
    (as a refusal says where the child stopped: "killed by SIGSEGV while compiling")."""

    target: str
    arguments: dict
    data: bytes = b""
    doing: str = "while running"


def start_method() -> str:
    """'fork' for a process with one thread (a CLI command: the child starts at once, with every module
    already imported), 'spawn' otherwise (a server: forking a process with other threads could copy a
    lock one of them holds, so a fresh interpreter is started)."""
    try:
        return "fork" if len(os.listdir("/proc/self/task")) == 1 else "spawn"  # every thread, native ones too
    except OSError:
        return "spawn"


def run_isolated(requests: Sequence[Request], limits: Limits, method: str = "auto") -> list[dict | TrialRefused]:
    """Run each request in a child process of its own under `limits`, at most PARALLEL at once.

    Each answer is the target's dict, or a TrialRefused saying how the child ended. Every child
    started is killed and waited for before this returns or raises: none outlives the call.
    """
    if method not in START_METHODS:
        raise ValueError(f"method must be one of {', '.join(START_METHODS)}, not {method!r}")
    chosen = start_method() if method == "auto" else method
    outcomes: list[dict | TrialRefused] = []
    for first in range(0, len(requests), PARALLEL):
        children: list[_Child] = []
        try:
            for request in requests[first:first + PARALLEL]:
                children.append(_Child(request, limits, chosen))
            outcomes.extend(child.finish() for child in children)
        finally:
            for child in children:
                child.close()
    return outcomes


class _Child:
    """One child process (forked or spawned), its output files and its wall-clock deadline."""

    def __init__(self, request: Request, limits: Limits, method: str):
        self.limits = limits
        self.doing = request.doing
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # a forked child not yet waited for
        self.failure: str | None = None
        self.output = self.errors = None
        try:
            # Files, not pipes: nothing the child writes can block it or fill the parent's memory.
            self.output, self.errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            if method == "fork":
                self._fork(request)
            else:
                self._spawn(request)
        except OSError as exc:  # EAGAIN, EMFILE, ENOMEM, a full disk: the machine's state, not the input's
            self.failure = f"the trial process could not start: {exc.strerror or exc}"
        self.deadline = time.monotonic() + limits.wall_seconds

    def _spawn(self, request: Request) -> None:
        header = {"target": request.target, "arguments": request.arguments, "cpu_seconds": self.limits.cpu_seconds,
                  "memory_mib": self.limits.memory_mib}
        with tempfile.TemporaryFile() as source:
            source.write(json.dumps(header).encode() + b"\n" + request.data)
            source.seek(0)
            # The child sees modules as this process does (the project may run from a checkout).
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}
            self.process = subprocess.Popen([sys.executable, "-P", "-c", _CHILD_CODE], stdin=source,
                                            stdout=self.output, stderr=self.errors, env=env, close_fds=True)

    def _fork(self, request: Request) -> None:
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        try:  # the child: it never returns into the parent's code
            # The parent's objects are not the child's garbage: collections that walked them would touch
            # (and so copy) every page the child shares with the parent.
            gc.freeze()
            faulthandler.disable()  # the parent reports a crash; a dump would go to the parent's terminal
            os.dup2(self.errors.fileno(), 1)
            os.dup2(self.errors.fileno(), 2)
            _serve(_resolve(request.target), request.arguments, request.data, self.output.fileno(),
                   self.limits.cpu_seconds, self.limits.memory_mib)
        finally:
            os._exit(70)

    def finish(self) -> dict | TrialRefused:
        """Wait for the child until its deadline (then kill it) and read its answer."""
        if self.failure is not None:
            return TrialRefused(self.failure, "start")
        code = self._wait()
        if code is None:
            return TrialRefused(f"stopped after {self.limits.wall_seconds:g} s of wall-clock time "
                                f"{self._where(self._lines())}", "wall")
        return self._outcome(code)

    def close(self) -> None:
        """Kill the child if it still runs, wait for it (no zombie is left) and close its files."""
        try:
            self._kill()
        finally:
            for file in (self.output, self.errors):
                if file is not None:
                    file.close()

    def _kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        elif self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)  # not waited for yet, so the pid is still this child's
            os.waitpid(self.pid, 0)
            self.pid = None

    def _wait(self) -> int | None:
        """The child's exit code (-N for signal N), or None once it was killed at the deadline."""
        if self.process is not None:
            try:
                return self.process.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill()
                return None
        assert self.pid is not None
        pause = 0.001
        while time.monotonic() < self.deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                return os.waitstatus_to_exitcode(status)
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        self._kill()
        return None

    def _outcome(self, code: int) -> dict | TrialRefused:
        lines = self._lines()
        where = self._where(lines)
        if code < 0:
            if -code == signal.SIGXCPU:
                return TrialRefused(f"reached the CPU-time limit {where}", "cpu")
            return TrialRefused(f"killed by {_signal_name(-code)} {where}", "crash")
        answer = next((line[7:] for line in reversed(lines) if line.startswith("answer ")), None)
        if code != 0 or answer is None:
            last = self._last_error_line()
            return TrialRefused(f"the trial process ended with status {code} {where}"
                                + (f" ({last})" if last else ""), "crash")
        try:
            outcome = json.loads(answer)
        except ValueError:
            return TrialRefused("the trial process gave an answer that is not JSON", "crash")
        if outcome.get("outcome") == "memory":
            return TrialRefused(f"reached the memory limit {where}", "memory")
        if outcome.get("outcome") == "error":
            return TrialRefused(f"{outcome.get('message')} ({where})", "error")
        if not isinstance(outcome.get("result"), dict):
            return TrialRefused("the trial process gave no result", "crash")
        return outcome["result"]

    def _lines(self) -> list[str]:
        self.output.seek(0)
        return self.output.read(OUTPUT_BYTES).decode("utf-8", "replace").splitlines()

    def _where(self, lines: list[str]) -> str:
        return self.doing if "started" in lines else "while starting"

    def _last_error_line(self) -> str:
        """The last line the child wrote to stderr, shortened; the end of it goes to the debug log.

        Debug, not error: a command has no log handler, and Python's last resort would print a
        traceback to the person, whom the refusal already tells what happened."""
        self.errors.seek(0, os.SEEK_END)
        self.errors.seek(max(0, self.errors.tell() - 4000))
        tail = self.errors.read().decode("utf-8", "replace").strip()
        if tail:
            log.debug("trial process failed; the end of what it wrote:\n%s", tail)
        last = tail.splitlines()[-1].strip() if tail else ""
        return last if len(last) <= SUMMARY_CHARS else last[:SUMMARY_CHARS - 1] + "…"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _resolve(target: str):  # noqa: ANN202 - any function of (dict, bytes) -> dict
    import importlib

    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


# --- the child's side -----------------------------------------------------------------------------------------

def child_main() -> None:
    """Entry of a spawned child: read the request from stdin, import the target, then serve it."""
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the target prints goes to the error file, not into the answer
    header_line, _, data = sys.stdin.buffer.read().partition(b"\n")
    header = json.loads(header_line)
    target = _resolve(header["target"])  # imported before the limits: the trial pays only for the input
    _serve(target, header["arguments"], data, answer_fd, header["cpu_seconds"], header["memory_mib"])


def _serve(target, arguments: dict, data: bytes, answer_fd: int, cpu_seconds: float,  # noqa: ANN001
           memory_mib: int) -> None:
    """Set this child's limits from what it uses now, run the target, write its answer and exit."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime + cpu_seconds)
    _limit(resource.RLIMIT_CORE, 0, 0)  # a crash leaves no core file behind
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second on
    memory = _address_space() + memory_mib * 2**20
    _limit(resource.RLIMIT_AS, memory, memory)
    _limit(resource.RLIMIT_FSIZE, OUTPUT_BYTES, OUTPUT_BYTES)
    _write_all(answer_fd, b"started\n")
    try:
        answer = {"outcome": "ok", "result": target(arguments, data)}
    except MemoryError:
        answer = {"outcome": "memory"}
    except Exception as exc:  # noqa: BLE001 - the parent turns it into a refusal that names the input
        answer = {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    try:
        text = json.dumps(answer)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"outcome": "error", "message": f"the target's answer is not JSON ({exc})"})
    _write_all(answer_fd, f"answer {text}\n".encode())
    os._exit(0)  # no interpreter teardown: nothing the input built is destroyed (or crashes) on the way out


def _limit(which: int, soft: int, hard: int) -> None:
    """setrlimit, within the hard limit this process inherited (`ulimit -v`, a hard CPU limit): an
    unprivileged process cannot raise it, and asking would fail every trial."""
    import resource

    inherited = resource.getrlimit(which)[1]
    if inherited != resource.RLIM_INFINITY:
        soft, hard = min(soft, inherited), min(hard, inherited)
    resource.setrlimit(which, (soft, hard))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _address_space() -> int:
    """This process's virtual memory size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
