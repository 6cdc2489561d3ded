"""Fault: a rank killed mid-step ends the job within 10 s with a non-zero status and no output file,
temporary or final.

moesim is started under mpirun on R = 2 and R = 3 ranks (oversubscribed) with --json,
--dump-routing and --dump-output pointed into an empty directory, with a batch whose step takes
about 0.1 s and enough iterations (2000) that the run would last minutes. Once every rank process
exists and the run is well inside its timed steps, one rank gets SIGKILL: a non-zero rank (it dies
while the others wait on it in an all-to-all) and, in other cases, rank 0 (the one that writes the
files). Checked for each case:
  - mpirun exits within 10 s of the kill (Open MPI notices a child killed by a signal and kills
    the rest; nothing in moesim may keep the survivors waiting in a collective), with a non-zero
    status;
  - the output directory is empty, both when the kill is sent (nothing is written before the
    steps end) and after the job (no final output and no temporary file: moesim writes to
    PATH.tmp.PID and renames when complete, so a killed writer must leave nothing behind);
  - no process of the job survives it: every process of mpirun's session, and every process that
    carries this test's marker in its environment (the ranks inherit mpirun's environment), is
    gone within 5 s of mpirun's exit. Whatever is left is killed at the end, as moetest.run does.

"Well inside the timed steps": a calibration run of the same batch with one step and no warm-up
gives the wall time T1 of start-up + set-up + one step + teardown; the kill comes 2 T1 + 1 s after
the last rank process appeared (at least 1.5 s), i.e. past the warm-up step and into the 2000 timed
ones, which last minutes. The test checks that the job was still running at that moment.

The 10 s bound is generous: mpirun's own reaction is immediate (MPI_ENV sets
odls_base_sigkill_timeout to 0); a job that needs more is hung on a dead peer.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import moetest as mt

ARGS = ["--tokens", 4096, "--hidden", 256, "--experts", 8, "--top-k", 2,
        "--capacity-factor", "1.0"]
LONG_ITERS = 2000
END_WITHIN = 10.0   # seconds from the kill to mpirun's exit
STRAY_GRACE = 5.0   # seconds after mpirun's exit for every process of the job to be gone
CASES = [
    # ranks, rank to kill
    (2, 1),
    (2, 0),
    (3, 2),
    (3, 0),
]


def env_of(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    out = {}
    for item in raw.split(b"\0"):
        key, sep, val = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = val.decode(errors="replace")
    return out


def marked_processes(marker):
    """pids of every process whose environment carries MOESIM_FAULT_MARK=marker."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            env = env_of(int(entry))
            if env is not None and env.get("MOESIM_FAULT_MARK") == marker:
                pids.append(int(entry))
    return pids


def is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def rank_processes(exe, sid):
    """{rank: pid} of the moesim processes in session sid, read from /proc."""
    ranks = {}
    for pid in mt.session_members(sid):
        try:
            if os.path.realpath("/proc/%d/exe" % pid) != exe:
                continue
        except OSError:
            continue
        env = env_of(pid)
        if env and "OMPI_COMM_WORLD_RANK" in env and not is_zombie(pid):
            ranks[int(env["OMPI_COMM_WORLD_RANK"])] = pid
    return ranks


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def calibrate(ck, exe, ranks, wd):
    """Wall seconds of the batch with one step and no warm-up (start-up, set-up, one step, end)."""
    d = tempfile.mkdtemp(prefix="calib-", dir=wd)
    r = mt.run(exe, ranks, ARGS + ["--iters", 1, "--warmup", 0, "--quiet",
                                   "--json", os.path.join(d, "c.json")], timeout=60)
    if not ck.equal(r.returncode, 0, "R=%d: calibration run succeeds" % ranks):
        print(r.describe())
        return None
    with open(os.path.join(d, "c.json")) as fh:
        step = json.load(fh)["timing"]["step"]["max"]
    print("R=%d calibration: one-step run %.2f s wall, step %.3f s" % (ranks, r.elapsed, step))
    return r.elapsed


def fault_case(ck, exe, wd, ranks, victim, t1):
    tag = "R=%d kill rank %d" % (ranks, victim)
    out = tempfile.mkdtemp(prefix="fault-R%d-k%d-" % (ranks, victim), dir=wd)
    marker = uuid.uuid4().hex
    cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), exe] + [str(a) for a in ARGS] + [
        "--iters", str(LONG_ITERS), "--warmup", "1", "--quiet",
        "--json", os.path.join(out, "run.json"),
        "--dump-routing", os.path.join(out, "routing.csv"),
        "--dump-output", os.path.join(out, "y.npy")]
    env = dict(os.environ)
    env.update(mt.MPI_ENV)
    env["MOESIM_FAULT_MARK"] = marker
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=out, start_new_session=True)
    try:
        # every rank process exists
        deadline = time.monotonic() + 30
        procs = {}
        while time.monotonic() < deadline and proc.poll() is None:
            procs = rank_processes(exe, proc.pid)
            if len(procs) == ranks:
                break
            time.sleep(0.05)
        if not ck.check(len(procs) == ranks and proc.poll() is None,
                        tag + ": all %d rank processes start" % ranks,
                        "found %r, mpirun status %r" % (procs, proc.poll())):
            return
        time.sleep(max(1.5, 2 * t1 + 1.0))
        if not ck.check(proc.poll() is None, tag + ": the job is still running when the kill "
                        "is sent (inside the timed steps)", "mpirun exited %r" % proc.poll()):
            return
        ck.equal(sorted(os.listdir(out)), [], tag + ": nothing written before the steps end")
        os.kill(procs[victim], signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=END_WITHIN)
            ended = time.monotonic() - t_kill
        except subprocess.TimeoutExpired:
            ck.check(False, tag + ": mpirun exits within %g s of the kill" % END_WITHIN,
                     "still running; members of its session: %r" % mt.session_members(proc.pid))
            return
        ck.check(True, tag + ": mpirun exits within %g s of the kill" % END_WITHIN)
        ck.check(proc.returncode != 0, tag + ": non-zero exit status",
                 "exit %r\nstderr:\n%s" % (proc.returncode, stderr[-2000:]))
        left = sorted(os.listdir(out))
        ck.check(left == [], tag + ": no output file, temporary or final, afterwards",
                 "left: %r" % left)
        # every process of the job is gone (zombies are reaped by their parent, or by init)
        deadline = time.monotonic() + STRAY_GRACE
        stray = []
        while True:
            stray = [p for p in set(mt.session_members(proc.pid)) | set(marked_processes(marker))
                     if not is_zombie(p)]
            if not stray or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        ck.check(stray == [], tag + ": no process of the job survives it (%g s grace)"
                 % STRAY_GRACE, "alive: %r" % stray)
        print("%-18s mpirun exit %d, %.2f s after the kill; outputs left: %d; strays: %d"
              % (tag, proc.returncode, ended, len(left), len(stray)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        kill_all(set(mt.session_members(proc.pid)) | set(marked_processes(marker)))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    exe = os.path.realpath(mt.moesim_path())
    ck = mt.Checker("test_fault")
    wd = mt.workdir()
    t1 = {}
    for ranks, victim in CASES:
        if ranks not in t1:
            t1[ranks] = ck.guard("R=%d calibration" % ranks, calibrate, ck, exe, ranks, wd)
        if t1[ranks] is None:
            continue
        ck.guard("R=%d kill rank %d" % (ranks, victim), fault_case, ck, exe, wd, ranks, victim,
                 t1[ranks])
    ck.finish()


if __name__ == "__main__":
    main()
