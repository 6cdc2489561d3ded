"""Shared helpers of the launch tests (suite 'launch'): running a launch script, reading the
`+ command` line it prints, fake launchers that record the argv they were given, and a check list
that reports every failed check before exiting 1.

Every test script is run as `/usr/bin/python3 test_x.py MOESIM LAUNCH_DIR` and exits 0 (pass),
1 (fail) or 77 (skipped, reason printed).
"""

import os
import shlex
import stat
import subprocess
import sys
import time

T0 = time.monotonic()


def say(msg):
    """A progress line with the seconds since the test started."""
    print("[%6.1f s] %s" % (time.monotonic() - T0, msg), flush=True)


def skip(reason):
    print("SKIP: %s" % reason, flush=True)
    sys.exit(77)


def paths():
    """(moesim, launch_dir) from the command line, both absolute and checked."""
    if len(sys.argv) != 3:
        print("usage: %s MOESIM LAUNCH_DIR" % sys.argv[0], file=sys.stderr)
        sys.exit(2)
    moesim, launch = (os.path.abspath(a) for a in sys.argv[1:3])
    if not os.access(moesim, os.X_OK):
        print("FAIL: moesim executable not found at %s" % moesim)
        sys.exit(1)
    if not os.path.isdir(launch):
        print("FAIL: no launch directory at %s" % launch)
        sys.exit(1)
    return moesim, launch


def cores():
    """What `nproc` prints: the CPUs this process may run on (the launcher's notion of cores)."""
    return len(os.sched_getaffinity(0))


def _session_base():
    import atexit
    import shutil
    import tempfile
    base = tempfile.mkdtemp(prefix="moesim-ompi-")
    atexit.register(shutil.rmtree, base, True)
    return base


_SESSION_BASE = _session_base()


def clean_env(**extra):
    """The environment without Slurm's and Open MPI's root permission variables, so a test sees
    what the script itself adds; plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in (
               "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
               "OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    env.update({"OPENBLAS_NUM_THREADS": "1", "MOESIM_NO_TTY": "1",
                # Open MPI's session directories under a root of this test's own: two mpiruns
                # creating the shared per-user one at once fail in Open MPI 4.1 (moetest.py)
                "OMPI_MCA_orte_tmpdir_base": _SESSION_BASE})
    env.update(extra)
    return env


class Run:
    def __init__(self, cmd, proc, elapsed):
        self.cmd, self.returncode, self.elapsed = cmd, proc.returncode, elapsed
        self.stdout, self.stderr = proc.stdout, proc.stderr

    def describe(self):
        return "command: %s\nexit %s after %.1f s\nstdout:\n%s\nstderr:\n%s" % (
            shlex.join(self.cmd), self.returncode, self.elapsed, self.stdout[-3000:],
            self.stderr[-3000:])

    def plus_line(self, stream="stderr"):
        """The argv of the first `+ ...` line on `stream`, shell-unquoted; None if there is none."""
        for line in getattr(self, stream).splitlines():
            if line.startswith("+ "):
                return shlex.split(line[2:])
        return None


def run(cmd, env=None, timeout=120, cwd=None):
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        print("FAIL: timed out after %d s: %s\nstdout:\n%s\nstderr:\n%s" % (
            timeout, shlex.join(cmd), exc.stdout, exc.stderr))
        sys.exit(1)
    return Run(cmd, proc, time.monotonic() - start)


def start(cmd, env=None, cwd=None):
    """Start cmd in its own session (as a terminal would its job: a signal to its process group
    is what a Ctrl-C sends), stdout and stderr captured; finish() collects it."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    proc.started, proc.cmd = time.monotonic(), cmd
    return proc


def finish(proc, timeout=120):
    """Wait for a start()ed command; a Run. On a timeout, kill its session and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        print("FAIL: timed out after %d s: %s\nstdout:\n%s\nstderr:\n%s" % (
            timeout, shlex.join(proc.cmd), out, err))
        sys.exit(1)
    proc.stdout, proc.stderr = out, err
    return Run(proc.cmd, proc, time.monotonic() - proc.started)


def processes_running(ancestor, exe):
    """Process ids below `ancestor` (children, grandchildren...) whose executable is `exe`."""
    parent = {}
    for name in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % name) as f:
                parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    below, todo = set(), [ancestor]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in below]
        below.update(kids)
        todo.extend(kids)
    real = os.path.realpath(exe)
    found = []
    for p in sorted(below):
        try:
            if os.readlink("/proc/%d/exe" % p).removesuffix(" (deleted)") == real:
                found.append(p)
        except OSError:
            pass
    return found


def catches(pid, *signums):
    """Whether process pid has handlers installed for all of signums (SigCgt in /proc)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration, ValueError):
        return False
    return all(mask >> (s - 1) & 1 for s in signums)


def wait_until(predicate, timeout=60, step=0.05):
    """Poll predicate until it returns something true (returned); None after timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(step)
    return None


def fake_launcher(bin_dir, name, record, then_exec=False):
    """Write bin_dir/name, a stand-in for mpirun or srun that writes its argv, one per line, to
    `record`. With then_exec it then drops its leading --options and runs the rest (the moesim
    command) as one process, as a one-task srun would."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    body = ["#!/bin/sh", "printf '%%s\\n' %s \"$@\" > %s" % (shlex.quote(name), shlex.quote(record))]
    if then_exec:
        body += ['while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done',
                 'exec "$@"']
    with open(path, "w") as f:
        f.write("\n".join(body) + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def recorded(record):
    """The argv a fake launcher recorded, or None if it never ran."""
    if not os.path.exists(record):
        return None
    with open(record) as f:
        return f.read().splitlines()


class Checks:
    """Collects failed checks so one run reports all of them; done() exits 1 if any failed."""

    def __init__(self):
        self.failed, self.count = [], 0

    def check(self, ok, what, detail=""):
        self.count += 1
        if not ok:
            self.failed.append(what + ("\n" + detail if detail else ""))
            print("  not ok: %s" % what, flush=True)
        return ok

    def done(self, name):
        if self.failed:
            print("FAIL: %s: %d of %d checks failed:" % (name, len(self.failed), self.count))
            for f in self.failed:
                print("---\n" + f)
            sys.exit(1)
        say("%s: all %d checks passed" % (name, self.count))
        sys.exit(0)
