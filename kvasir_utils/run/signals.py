"""Running a notebook headlessly (papermill) so that Ctrl-C and kills stop it, and nothing is left.

Jupyter starts the kernel in a session of its own, so a terminal's Ctrl-C (SIGINT to the
foreground process group) reaches ``make`` and this process but never the kernel. While a
notebook runs, ``stop_on_signal`` turns SIGINT and SIGTERM into: interrupt the kernel once (the
running cell raises KeyboardInterrupt and its ``finally`` blocks close files), run no further
cell, and if the kernel has not stopped after ``GRACE_SECONDS`` (or at a second Ctrl-C), kill its
whole process group. When the notebook ends, whatever is left in the kernel's process group
(loader workers, cache workers) is killed too, so no process of the run outlives it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

GRACE_SECONDS = 10.0


class Interrupted(Exception):
    """The run was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int, what: str = ""):
        super().__init__(what or signal.Signals(signum).name)
        self.signum = signum


def resume_hint(command: str | None) -> str:
    """How to go on: the make command the user ran (the Makefile passes it as ``--go-on``), else the
    generic advice."""
    return f"`{command}` again" if command else "the same command again"


class KernelStopper:
    """Tracks the kernels papermill starts here and stops them when this process is asked to stop."""

    def __init__(self, grace: float = GRACE_SECONDS):
        self.grace = grace
        self.signum: int | None = None
        self.kernel_pids: list[int] = []
        self.socket_folders: list[str] = []
        self._interrupted: set[int] = set()
        self._killed = threading.Event()
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- papermill's side: a kernel manager that reports its kernel, a hook before each cell ----
    def kernel_manager_class(self, env: dict[str, str] | None = None) -> type:
        """An ``AsyncKernelManager`` over IPC sockets (a local file, no TCP port and no plain-text
        transport warning) that hands its kernel's process id to this stopper once started; its
        kernel gets ``env`` (this process's environment where None)."""
        from jupyter_client import AsyncKernelManager

        stopper = self

        class StoppableKernelManager(AsyncKernelManager):
            def __init__(self, **kwargs):
                # IPC sockets in a folder of this kernel's own: concurrent kernels (sweep members)
                # would otherwise race for the same socket names in the shared working folder
                folder = tempfile.mkdtemp(prefix="kvasir-kernel-")
                stopper.socket_folders.append(folder)
                super().__init__(**{"transport": "ipc", "ip": os.path.join(folder, "kernel"), **kwargs})

            async def start_kernel(self, **kw):
                return await super().start_kernel(**({"env": env, **kw} if env is not None else kw))

            async def _async_launch_kernel(self, kernel_cmd, **kw):
                await super()._async_launch_kernel(kernel_cmd, **kw)
                process = getattr(self.provisioner, "process", None)
                if process is not None:
                    stopper.kernel_started(process.pid)

        return StoppableKernelManager

    def before_cell(self, **_) -> None:
        """nbclient's ``on_cell_execute`` hook: no cell starts once a stop was asked for."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def kernel_started(self, pid: int) -> None:
        self.kernel_pids.append(pid)
        if self.signum is not None:  # asked to stop while the kernel was starting
            self._signal_kernels(signal.SIGINT)

    # -- this process's side ------------------------------------------------------------
    def _signal_kernels(self, sig: int) -> None:
        for pid in self.kernel_pids:
            if sig == signal.SIGINT and pid in self._interrupted:
                continue  # one interrupt only: a second would break the cell's clean-up
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)  # the kernel leads its own session: its group is its pid
            if sig == signal.SIGINT:
                self._interrupted.add(pid)

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            self._killed.set()
            self._signal_kernels(signal.SIGKILL)
            return
        self.signum = signum
        self._signal_kernels(signal.SIGINT)
        self._watcher = threading.Thread(target=self._escalate, daemon=True)
        self._watcher.start()

    def _escalate(self) -> None:
        """Kill the kernels that have not stopped within the grace period."""
        if not self._done.wait(self.grace):
            self._killed.set()
            self._signal_kernels(signal.SIGKILL)

    @property
    def killed(self) -> bool:
        return self._killed.is_set()

    def __enter__(self) -> KernelStopper:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.reap()
        for folder in self.socket_folders:
            shutil.rmtree(folder, ignore_errors=True)

    def reap(self) -> None:
        """Kill what is left in the kernels' process groups (nbclient has shut the kernels down)."""
        for pid in self.kernel_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in self.kernel_pids):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Terminal:
    """Where a command's output goes (``out`` and ``err``, this process's stdout and stderr unless
    given), and whether the last thing written there left the line open (a progress bar's carriage
    return, say), so the command's last message can start on a line of its own."""

    def __init__(self, out=None, err=None):
        self.mid_line = False
        self.out = _Tracked(self, out or sys.stdout)
        self.err = _Tracked(self, err or sys.stderr)

    def print_last(self, message: str) -> None:
        """``message`` on ``err``, on a line of its own, after whatever was written last."""
        self.out.flush()
        prefix = "\n" if self.mid_line else ""
        self.mid_line = False
        print(f"{prefix}{message}", file=self.err.target, flush=True)


class _Tracked:
    """A stream that forwards to ``target`` and tells its ``Terminal`` whether a line is left open."""

    def __init__(self, terminal: Terminal, target):
        self.terminal, self.target = terminal, target

    def write(self, text: str) -> int:
        if text:
            self.terminal.mid_line = not text.endswith("\n")
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def __getattr__(self, name):
        return getattr(self.target, name)
