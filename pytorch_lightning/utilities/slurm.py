"""SLURM preemption: SIGUSR1 asks the trainer to save, requeue and exit."""
import os
import signal
import subprocess
import threading


def slurm_job_id():
    """``$SLURM_JOB_ID`` (unique per array task too), or ``None`` outside SLURM."""
    return os.environ.get('SLURM_JOB_ID')


class PreemptionSignal:
    """While installed, SIGUSR1 only records the request; the loop acts on it at its next
    save point (never inside a half-finished step)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return False  # signal handlers can only be set from the main thread
        self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return True

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


#: Longest wait for ``scontrol requeue`` to answer (a busy slurmctld answers in seconds).
SCONTROL_TIMEOUT_S = 120.0


def requeue(job_id):
    """Ask SLURM to requeue ``job_id``; SIGTERM (sent by the requeue) is ignored from here
    on so the process can finish writing and exit by itself. ``scontrol`` gets
    ``SCONTROL_TIMEOUT_S`` seconds to answer; a failure or no answer raises ``RuntimeError``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        result = subprocess.run(['scontrol', 'requeue', str(job_id)], capture_output=True,
                                text=True, timeout=SCONTROL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"`scontrol requeue {job_id}` did not answer within {SCONTROL_TIMEOUT_S:.0f} s. The "
            f"HPC checkpoint was written; resubmit the job to continue from it.") from None
    if result.returncode != 0:
        raise RuntimeError(
            f"`scontrol requeue {job_id}` failed (exit {result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}. The HPC checkpoint was written; "
            f"resubmit the job to continue from it.")


class Terminated(BaseException):
    """SIGTERM arrived during ``fit`` (raised by ``TerminationGuard`` in the main thread)."""


class TerminationGuard:
    """While installed, SIGTERM raises ``Terminated`` in the main thread, so ``fit`` can save
    the logs and finish pending checkpoints before the process dies of the signal
    (``die()``). Installed only over the default handler: a handler of the user's wins."""

    def __init__(self):
        self._installed = False
        self._closing = False
        #: a SIGTERM arrived while ``fit`` was closing (see ``closing``)
        self.pending = False

    def install(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        if self._closing:  # never break off the saving: die of it once that is done
            self.pending = True
            return
        raise Terminated('SIGTERM')

    def closing(self):
        """``fit`` is saving the logs and checkpoints after an exception: from now on a
        SIGTERM (a second one, or one after another error) only sets ``pending``."""
        self._closing = True

    def uninstall(self):
        # requeue() may have set SIG_IGN meanwhile: only our own handler is undone
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed = False

    def die(self):
        """End the process by SIGTERM, as it would have without the guard."""
        self.uninstall()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
