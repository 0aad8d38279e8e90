"""A sweep's members as Ray tasks. A member is an ordinary run: ``make evaluate`` (notebooks 01-04
and the HTML report) with its own overrides and folders, so it skips what it finished and resumes
what was interrupted. Members run on a local Ray instance started by ``ray.init()``, or on a
cluster through ``RAY_ADDRESS`` (or ``address:`` in the sweep file), with no change.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kvasir_utils import config
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_json_atomic
from kvasir_utils.run.notebooks import source_entries
from kvasir_utils.run.sweep_spec import Member, Sweep, settings_fingerprint


# -- records ------------------------------------------------------------------------------
def read_record(member: Member) -> dict | None:
    try:
        return json.loads(member.record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_finished(member: Member) -> bool:
    """Finished under exactly these settings, from the local sources as they are now (a source gone
    since counts as unchanged, as in ``notebooks.write_source_stamp``), with its evaluation on disk."""
    record = read_record(member)
    recorded = (record or {}).get("sources") or {}
    return (bool(record) and record.get("status") == "finished"
            and record.get("settings_sha256") == settings_fingerprint(member)
            and all(recorded.get(url) == identity for url, identity in source_entries(member.cfg).items())
            and (member.cfg.run.metrics(member.model)).exists())


def write_record(sweep: Sweep, member: Member, status: str, failure: dict | None, node: dict | None,
                 seconds: float, attempts: int) -> Path:
    """``member.json``; a failed member's ``failed_step``, ``exit_code`` and ``error`` come as fields."""
    failure = failure or {"failed_step": None, "exit_code": 0, "error": ""}
    return write_json_atomic(member.record_path, {
        "sweep": sweep.name, "member": member.name, "settings": member.settings, "model": member.model,
        "seed": member.seed, "seed_setting": sweep.spec.seed_setting, "reading": member.reading,
        "status": status, **failure, "node": node, "seconds": round(seconds, 1), "attempts": attempts,
        "overrides": member.overrides, "settings_sha256": settings_fingerprint(member),
        "sources": source_entries(member.cfg),
        "report": str(member.report_index),
    })


# -- one member, inside a Ray task ----------------------------------------------------------
class MemberFailed(RuntimeError):
    """A member's run ended with an error; Ray retries the task, then the driver records it."""

    def __init__(self, failure: dict, node: dict, attempts: int):
        super().__init__(failure["error"])
        self.failure, self.node, self.attempts = failure, node, attempts

    def __reduce__(self):
        return MemberFailed, (self.failure, self.node, self.attempts)


def _failure(path: Path, exit_code: int) -> dict:
    """What the failing step recorded about itself (``run.cli``: step, exit code, error), with make's
    exit code; when no step recorded one (make failed before any notebook started), says so."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        recorded = {"step": "make", "error": f"make exited with code {exit_code} before a step reported an "
                                             "error (see member.log)"}
    return {"failed_step": recorded["step"], "exit_code": exit_code, "error": recorded["error"]}


def _count_attempt(folder: Path, invocation: str) -> int:
    """This attempt's number within this invocation of the sweep (Ray reruns the task to retry it)."""
    path = folder / "attempts.json"
    try:
        counted = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        counted = {}
    attempts = counted.get("attempts", 0) + 1 if counted.get("invocation") == invocation else 1
    write_json_atomic(path, {"invocation": invocation, "attempts": attempts})
    return attempts


def _die_with_parent():
    """For the member's make: a function that, run in the child, asks Linux for SIGTERM when the
    Ray worker that started it dies, even by SIGKILL; make passes SIGTERM on to the notebooks.
    The C function is looked up here, before the fork (nothing unsafe runs in the child)."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: Ctrl-C and cancel still stop the member
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    """Stop a member's make and everything it started (its own process group), politely first."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def member_command(profile: str, overrides: list[str], failure_file: Path) -> list[str]:
    """The make command of one member; its failing step describes itself in ``failure_file``.
    It runs in its node's environment, the Python of the Ray worker (``.venv``, or a conda
    environment given to make as ``VENV``), set up before the sweep (`make sweep` updates the
    driver's). ``--old-file`` on that environment's setup stamp: a member never installs; members
    installing into it at once broke it."""
    environment = sys.prefix
    return ["make", "--no-print-directory", "-C", str(config.PROJECT_ROOT), "--old-file", f"{environment}/.installed",
            "pipeline-evaluated", f"VENV={environment}", f"PROFILE={profile}", f"SET={' '.join(overrides)}",
            f"FAILURE_FILE={failure_file}"]


def execute_member(profile: str, overrides: list[str], folder: str, invocation: str, node: dict) -> dict:
    """Run one member's chain (``make evaluate``: 01-04 and its report); raise MemberFailed on an error.

    The output goes to ``<member folder>/member.log``; each attempt starts with a header, so the
    log shows the retries."""
    log = Path(folder) / "member.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    attempts = _count_attempt(Path(folder), invocation)
    failure_file = Path(folder) / "failure.json"
    failure_file.unlink(missing_ok=True)
    start = time.time()
    header = f"=== sweep run {invocation} attempt on node {node['id']} ({node['hostname']})"
    with open(log, "a") as out:
        out.write(f"{header} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.flush()
        command = member_command(profile, overrides, failure_file)
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**env, "PYTHONUNBUFFERED": "1"},
                                   preexec_fn=_die_with_parent())
        try:
            while (code := process.poll()) is None:  # polled: a cancelled task is interrupted here
                time.sleep(0.5)
        finally:
            _stop(process)  # Ctrl-C or a cancelled task: stop the notebooks too
    if code != 0:
        raise MemberFailed(_failure(failure_file, code), node, attempts)
    return {"seconds": time.time() - start, "node": node, "attempts": attempts}


def _ray_member(profile, overrides, folder, invocation, tracker, name):
    import ray

    node = {"id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    tracker.started.remote(name)
    try:
        return execute_member(profile, overrides, folder, invocation, node)
    finally:
        tracker.ended.remote(name)


class _Tracker:
    """Which members are running now (the driver's progress bar asks)."""

    def __init__(self):
        self.running: set[str] = set()

    def started(self, name: str) -> None:
        self.running.add(name)

    def ended(self, name: str) -> None:
        self.running.discard(name)

    def count(self) -> int:
        return len(self.running)


# -- the driver ---------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    finished: list[str]
    failed: dict[str, str]  # member -> error
    skipped: list[str]  # finished by an earlier run


def _connect(sweep: Sweep):
    import ray

    # "local": a new instance on this machine, even if a cluster started with `ray start` runs here
    # (ray.init() would join that one). The study's modules are importable on every node because
    # each node runs from the same checkout and environment (README).
    address = sweep.spec.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING")
    _check_resources(ray, sweep)
    return ray


def _check_resources(ray, sweep: Sweep) -> None:
    """A run that no node can hold would wait forever: refuse it with the numbers."""
    wanted = {"CPU": sweep.spec.resources.cpus, "GPU": sweep.spec.resources.gpus}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        ray.shutdown()
        raise KvasirError(
            f"sweep {sweep.name} asks for {wanted['CPU']:g} CPU(s) and {wanted['GPU']:g} GPU(s) per run, but the "
            f"largest node has {largest.get('CPU', 0):g} CPU(s) and {largest.get('GPU', 0):g} GPU(s); lower "
            f"`resources:` in the sweep file (fractions are allowed) or add a node that has them")


def run_sweep(sweep: Sweep, progress: bool = True) -> SweepOutcome:
    """Run every member that is not finished as a Ray task; record each in its member.json."""
    from tqdm import tqdm

    skipped = [m.name for m in sweep.members if is_finished(m)]
    todo = [m for m in sweep.members if m.name not in skipped]
    outcome = SweepOutcome([], {}, skipped)
    if not todo:
        return outcome
    ray = _connect(sweep)
    invocation = uuid.uuid4().hex[:8]
    try:
        tracker = ray.remote(_Tracker).options(num_cpus=0).remote()
        task = ray.remote(_ray_member)
        options = {"num_cpus": sweep.spec.resources.cpus, "num_gpus": sweep.spec.resources.gpus,
                   "max_retries": sweep.spec.max_retries, "retry_exceptions": [MemberFailed]}
        refs = {task.options(name=m.name, **options).remote(sweep.profile, m.overrides, str(m.folder), invocation,
                                                            tracker, m.name): m for m in todo}
        start = {m.name: time.time() for m in todo}
        bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="member", disable=not progress)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's kill stops the runs like Ctrl-C
        try:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=2.0)
                for ref in done:
                    _collect(ray, sweep, refs[ref], ref, time.time() - start[refs[ref].name], outcome)
                    bar.update(1)
                running = ray.get(tracker.count.remote())
                bar.set_postfix(done=len(outcome.finished), running=running, failed=len(outcome.failed))
        except KeyboardInterrupt:
            bar.write(f"stopping {len(waiting)} member(s) ... (a rerun continues where they stopped)")
            for ref in waiting:
                ray.cancel(ref)
            ray.wait(waiting, num_returns=len(waiting), timeout=60)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
    finally:
        ray.shutdown()
    return outcome


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _collect(ray, sweep: Sweep, member: Member, ref, seconds: float, outcome: SweepOutcome) -> None:
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, MemberFailed) else None
        if cause is not None:
            failure = cause.failure
        else:  # the task itself broke (not the member's run)
            error = f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause is not None else str(exc).splitlines()[0]
            failure = {"failed_step": "ray task", "exit_code": None, "error": error}
        write_record(sweep, member, "failed", failure, cause.node if cause else None, seconds,
                     cause.attempts if cause else 0)
        outcome.failed[member.name] = failure["error"]
    except ray.exceptions.RayError as exc:  # a worker or node died: no result at all
        failure = {"failed_step": "ray worker", "exit_code": None,
                   "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        write_record(sweep, member, "failed", failure, None, seconds, 0)
        outcome.failed[member.name] = failure["error"]
    else:
        write_record(sweep, member, "finished", None, result["node"], result["seconds"], result["attempts"])
        outcome.finished.append(member.name)
