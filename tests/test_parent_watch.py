"""utilities.parent: a child ends itself when the process that started it is gone."""
import os
import subprocess
import sys
import time

from pytorch_lightning.utilities import parent, pid_alive

# The middle process starts the child and sleeps; the child watches the middle process and
# writes a file when it is gone. The test kills the middle process.
MIDDLE = '''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
'''
CHILD = '''
import os, sys, time
from pytorch_lightning.utilities.parent import watch_parent
started = watch_parent(os.getppid(), lambda: open({marker!r}, 'w').close(), interval_s=0.1)
assert started and not watch_parent(os.getppid(), print)  # one watcher per parent
open({marker!r} + '.ready', 'w').close()
time.sleep(60)
'''


def test_a_child_notices_its_parent_is_killed(tmp_path):
    marker = str(tmp_path / 'gone')
    middle = subprocess.Popen(
        [sys.executable, '-c', MIDDLE.format(child=CHILD.format(marker=marker))],
        stdout=subprocess.PIPE, text=True)
    child_pid = int(middle.stdout.readline())
    try:
        # the child's watcher is running (importing torch can take seconds on a busy machine)
        deadline = time.monotonic() + 60
        while not os.path.exists(marker + '.ready') and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(marker + '.ready')
        time.sleep(0.3)
        assert not os.path.exists(marker)  # the parent is alive: nothing happens
        middle.kill()
        middle.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(marker)
    finally:
        if pid_alive(child_pid):
            os.kill(child_pid, 9)


def test_a_pid_that_is_not_the_parent_is_not_watched():
    """An inherited SWEEP_PARENT_ENV (a process the trial started, e.g. a DDP rank) names its
    grandparent: nothing is watched, so the rank does not end itself at once."""
    assert not parent.watch_parent(os.getpid(), print)
    assert not parent.watch_parent(os.getppid() + 10 ** 7, print)
