"""Running the study's commands as a user does, in their own process group, and finding what they left.

Tests run a make target through ``run_make`` (or build its command line with ``make_command``):
tests/test_make_targets.py finds the targets they run by those calls and fails on one that no test runs.

Every command started here carries a tag in its environment (``KVASIR_TEST_TAG``), which every
process it starts inherits (make, the notebook runner, the Jupyter kernel, loader and cache
workers), so a test can list the processes of one run by reading ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from kvasir_utils import config

TAG = "KVASIR_TEST_TAG"
# What an outer `make test` puts in the environment and a user's terminal does not have: with them, the
# inner make believes it is a sub-make and keeps the outer command as the one to resume with.
MAKE_ONLY = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "GO_ON")


def _terminal_env() -> dict:
    """This process's environment as a terminal would hand it to a command: without make's own variables."""
    return {k: v for k, v in os.environ.items() if k not in (*MAKE_ONLY, "VENV")}  # the tests' makes use .venv


def make_command(target: str, *arguments: str, dry_run: bool = False) -> list[str]:
    """``make <target> VAR=value ...`` as typed in a terminal; ``dry_run`` prints the commands instead
    (``make -n``). The environment is taken as made (``--old-file`` on its stamp): the tests run in the
    one they started in, and a test reinstalling it while others use it would break them."""
    return ["make", "--no-print-directory", "-n" if dry_run else "--old-file=.venv/.installed", target, *arguments]


def run_make(target: str, *arguments: str, dry_run: bool = False, env: dict | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``make <target> <arguments>`` in the project as a user does, to the end; its output (stdout and
    stderr together) in ``.stdout``. ``env`` adds to a terminal's environment."""
    return subprocess.run(make_command(target, *arguments, dry_run=dry_run), cwd=config.PROJECT_ROOT,
                          env={**_terminal_env(), **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _as_foreground_job() -> None:
    """The signal handling a terminal gives its foreground job: a suite started in the background
    (``make test &``, a CI runner) hands its children SIGINT and SIGQUIT ignored, and a make that
    ignores Ctrl-C is not what a user meets."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Run:
    """A command in its own session (as a terminal's foreground job), its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.tag = uuid.uuid4().hex
        self.log = log
        self.args = args
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            environment = {**_terminal_env(), **(env or {}), TAG: self.tag}
            self.process = subprocess.Popen(args, cwd=config.PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=environment, preexec_fn=_as_foreground_job)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Wait until ``text`` appears in the output; fail if the command ends or the time runs out first."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None:
                raise AssertionError(f"ended (exit {self.process.returncode}) before {text!r}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.1)

    def ctrl_c(self) -> float:
        """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group, nothing after it.
        Returns the seconds until the command ended."""
        start = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=120)
        return time.monotonic() - start

    def finish(self, timeout: float = 600) -> int:
        return self.process.wait(timeout=timeout)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every live process that belongs to this run."""
        return tagged_processes(self.tag)

    def last_line(self) -> str:
        """The study's last line: what precedes make's own closing lines."""
        lines = [line for line in self.output.splitlines() if line.strip() and not line.startswith("make")]
        return lines[-1] if lines else ""


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{TAG}={tag}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":  # a zombie has ended; only its parent's wait is missing
            found.append((int(entry.name), command))
    return found


def wait_until_gone(run: Run, timeout: float = 10) -> list[tuple[int, str]]:
    """The run's processes still alive after ``timeout`` seconds (none, when all went)."""
    deadline = time.monotonic() + timeout
    while (left := run.processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
