"""Preemption: SIGTERM, SIGUSR1 or Ctrl-C asks for a checkpoint at the next step boundary.

SLURM sends SIGUSR1 (``#SBATCH --signal=USR1@120``) or SIGTERM before a time limit or a
preemption. The handler only sets a flag; the engine all-reduces it at each step boundary so
every rank saves the same step, then exits with `PREEMPTED_EXIT_CODE` so a wrapper or
``sbatch --requeue`` knows to start the job again, which resumes from that checkpoint.
Ctrl-C (SIGINT) does the same, so stopping a run by hand loses no work and prints no
traceback; a second Ctrl-C aborts at once, without a checkpoint.
"""
from __future__ import annotations

import os
import signal

PREEMPTED_EXIT_CODE = 75
"""Exit status after a preemption checkpoint (EX_TEMPFAIL: "try again later")."""

EXIT_FILE_ENV = "WESTKIT_EXIT_FILE"
"""If set, the engine writes its exit status there: torchrun reports a failed worker as 1,
so `launch/torchrun.sh` reads this file to exit with `PREEMPTED_EXIT_CODE` itself."""

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionFlag:
    """Installs handlers for `SIGNALS` that set ``requested``; `restore` puts the old ones back."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        # DataLoader workers forked later inherit the handler: they must not print
        self._pid = os.getpid()
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C ends the process
            if os.getpid() == self._pid and os.environ.get("RANK", "0") == "0":
                os.write(2, b"\nwestkit: Ctrl-C: checkpointing at the end of this step, then exiting "
                            b"(Ctrl-C again aborts at once, without a checkpoint)\n")

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def record_exit_code(code: int) -> None:
    """Write ``code`` to ``$WESTKIT_EXIT_FILE`` when the launcher asked for it."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(f"{code}\n")
