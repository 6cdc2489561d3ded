"""SIGTERM and SIGINT (docs/options.md, "Signals"): every rank stops at the next phase boundary, the
exit status says which signal (128 + N: 143 SIGTERM, 130 SIGINT), and no output is published;
or, when the signal arrives while the outputs are being written, the outputs are completed and the
status is 0. Status 0 always means complete outputs; any other status means none.

Open MPI 4.1's mpirun exits 1 whenever it itself receives SIGTERM/SIGINT, so the signal goes to the
moesim rank processes (mpirun's children whose executable is moesim; the rank of each is
OMPI_COMM_WORLD_RANK in its environment), and mpirun then returns their status. Every run writes
--json, --dump-routing and --dump-output into an empty directory. Checked:
  - stopped mid-run (R = 2 and 3, a batch whose step takes ~0.1 s and 2000 iterations, so minutes;
    the signal comes ~1 s after every rank process exists, when the job is still running): SIGTERM
    to every rank, SIGINT to every rank, SIGTERM to one rank only (rank 1, and rank 0, and the last
    rank at R = 3: the others must stop too) and SIGINT to one rank. mpirun exits within 15 s with
    143 or 130; stderr holds exactly one line of moesim's, starting "moesim: interrupted by
    SIG..." and saying "no output was written"; the directory is empty (no output, no temporary);
    no process of the job survives it;
  - SIGTERM to mpirun itself (its own exit status is 1 by Open MPI's design): the job still ends
    promptly, non-zero, and publishes nothing;
  - waiting for a FIFO's reader: --json names a FIFO with no reader, so rank 0 waits (up to 60 s)
    for one. Once it is seen waiting (sleeping in clock_nanosleep, /proc/PID/syscall, after the
    job has run well past its normal length) the ranks get SIGTERM (SIGINT at R = 3): rank 0 gives
    up the wait, nothing is published, every rank exits 128 + the signal with one line;
  - "complete outputs, exit 0": --dump-routing names a FIFO whose reader has opened it but does not
    read yet, so rank 0 blocks writing the 1 MB CSV once the 64 KiB pipe is full. Then the ranks get
    SIGTERM (SIGINT in a second case); after 0.5 s the run must still be going; the reader reads to
    EOF. Every CSV row must arrive, the JSON and y be published whole, the status be 0, and stderr
    hold a line saying the signal arrived while the outputs were being written and that they are
    complete.
"""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np

import moetest as mt

LONG = ["--tokens", 4096, "--hidden", 256, "--experts", 8, "--top-k", 2, "--iters", 2000,
        "--warmup", 1]
SMALL = ["--tokens", 200, "--hidden", 16, "--experts", 4, "--iters", 2, "--warmup", 0]
END_WITHIN = 15.0   # seconds from the signal to mpirun's exit (one step is ~0.1 s)
START_WITHIN = 20.0  # seconds for every rank process to appear
SETTLE = 1.0        # seconds the ranks run before the signal


class Job:
    """mpirun in its own session, stdout and stderr into files outside the output directory."""

    def __init__(self, exe, ranks, args, cwd):
        self.ranks = ranks
        self.cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), exe] + [str(a) for a in args]
        env = dict(os.environ)
        env.update(mt.MPI_ENV)
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=self.err, env=env, cwd=cwd,
                                     start_new_session=True)

    def ranks_by_number(self):
        """{rank: pid} of mpirun's moesim children."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open("/proc/%d/stat" % pid) as fh:
                    st = fh.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                if ppid != self.proc.pid:
                    continue
                if os.path.basename(os.readlink("/proc/%d/exe" % pid)) != "moesim":
                    continue
                with open("/proc/%d/environ" % pid, "rb") as fh:
                    env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
                found[int(env[b"OMPI_COMM_WORLD_RANK"])] = pid
            except (OSError, ValueError, KeyError, IndexError):
                continue
        return found

    def wait_ranks(self):
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline and self.proc.poll() is None:
            pids = self.ranks_by_number()
            if len(pids) == self.ranks:
                return pids
            time.sleep(0.05)
        return None

    def wait(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self):
        for pid in mt.session_members(self.proc.pid) + list(self.ranks_by_number().values()) + \
                [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def stdout(self):
        self.out.seek(0)
        return self.out.read().decode(errors="replace")

    def survivors(self, pids):
        """Processes of the job still alive (zombies do not count)."""
        alive = []
        for pid in set(mt.session_members(self.proc.pid)) | set(pids):
            try:
                with open("/proc/%d/stat" % pid) as fh:
                    st = fh.read()
                if st[st.rindex(")") + 2] != "Z":
                    alive.append(pid)
            except OSError:
                pass
        return alive


def outputs(d):
    return ["--json", os.path.join(d, "a.json"), "--dump-routing", os.path.join(d, "r.csv"),
            "--dump-output", os.path.join(d, "y.npy")]


def check_gone(ck, tag, job, pids):
    deadline = time.monotonic() + 5
    left = job.survivors(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = job.survivors(pids)
    ck.check(not left, tag + ": no process of the job survives", "alive: %s" % left)
    if left:
        job.kill()


def stop_mid_run(ck, exe, root, name, ranks, sig, targets):
    """targets: rank numbers to signal, or None for every rank."""
    d = os.path.join(root, name)
    os.makedirs(d)
    signame = signal.Signals(sig).name
    tag = "%s to %s (R=%d)" % (signame, "every rank" if targets is None else
                               "rank %s" % ",".join(map(str, targets)), ranks)
    job = Job(exe, ranks, LONG + ["--quiet"] + outputs(d), d)
    pids = job.wait_ranks()
    if not ck.check(pids is not None, tag + ": every rank process appears",
                    job.stderr()[-2000:]):
        job.kill()
        return
    time.sleep(SETTLE)
    if not ck.check(job.proc.poll() is None, tag + ": the job is still running when signalled",
                    job.stderr()[-2000:]):
        return
    ck.equal(sorted(os.listdir(d)), [], tag + ": nothing in the directory while it runs")
    t_sig = time.monotonic()
    for r, pid in sorted(pids.items()):
        if targets is None or r in targets:
            os.kill(pid, sig)
    ended = job.wait(END_WITHIN)
    took = time.monotonic() - t_sig
    if not ck.check(ended, tag + ": mpirun exits within %.0f s of the signal" % END_WITHIN,
                    job.stderr()[-2000:]):
        job.kill()
        return
    err = job.stderr()
    lines = mt.own_stderr_lines(err)
    want = 128 + sig
    ck.equal(job.proc.returncode, want, tag + ": exit status %d" % want)
    ok = ck.check(len(lines) == 1 and lines[0].startswith("moesim: interrupted by %s" % signame),
                  tag + ": exactly one line 'moesim: interrupted by %s ...'" % signame, err[-3000:])
    if ok:
        ck.check("no output was written" in lines[0], tag + ": it says no output was written",
                 lines[0])
        ck.check(re.search(r"after step \d+ of \d+|before the run", lines[0]),
                 tag + ": it says where the run stopped", lines[0])
    ck.equal(job.stdout(), "", tag + ": nothing on stdout (--quiet)")
    ck.equal(sorted(os.listdir(d)), [], tag + ": no output and no temporary left")
    check_gone(ck, tag, job, pids.values())
    print("%-34s exit %s %.2f s after the signal: %s" % (tag, job.proc.returncode, took,
                                                         lines[0] if lines else err[-200:]))


def signal_mpirun(ck, exe, root):
    d = os.path.join(root, "mpirun_sigterm")
    os.makedirs(d)
    tag = "SIGTERM to mpirun (R=2)"
    job = Job(exe, 2, LONG + ["--quiet"] + outputs(d), d)
    pids = job.wait_ranks()
    if not ck.check(pids is not None, tag + ": every rank process appears", job.stderr()[-2000:]):
        job.kill()
        return
    time.sleep(SETTLE)
    job.proc.send_signal(signal.SIGTERM)
    ended = job.wait(END_WITHIN)
    if not ck.check(ended, tag + ": mpirun exits within %.0f s" % END_WITHIN):
        job.kill()
        return
    ck.check(job.proc.returncode != 0, tag + ": non-zero exit status (Open MPI's mpirun gives 1)",
             "exit %s" % job.proc.returncode)
    ck.equal(sorted(os.listdir(d)), [], tag + ": no output and no temporary left")
    check_gone(ck, tag, job, pids.values())
    print("%-34s exit %s" % (tag, job.proc.returncode))


def main_thread_syscall(pid):
    """The number of the system call pid's main thread is in, or None (running, or unreadable)."""
    try:
        with open("/proc/%d/syscall" % pid) as fh:
            first = fh.read().split()[0]
        return int(first)
    except (OSError, ValueError, IndexError):
        return None


SLEEP_SYSCALLS = {35, 230}  # x86_64 nanosleep, clock_nanosleep


def wait_syscall(pid, calls, job, min_wait=0.0):
    """True once pid's main thread is seen in one of `calls` three looks in a row (0.1 s apart),
    at least min_wait seconds from now; False if mpirun ends first or 20 s pass."""
    t0, seen = time.monotonic(), 0
    while time.monotonic() - t0 < 20 and job.proc.poll() is None:
        seen = seen + 1 if main_thread_syscall(pid) in calls else 0
        if time.monotonic() - t0 >= min_wait and seen >= 3:
            return True
        time.sleep(0.1)
    return False


def waiting_for_reader(ck, exe, root, name, ranks, sig):
    """A signal while rank 0 waits for the --json FIFO's reader: it gives up the wait, publishes
    nothing and every rank exits 128 + the signal."""
    d = os.path.join(root, name)
    os.makedirs(d)
    fifo = os.path.join(d, "a.fifo")
    os.mkfifo(fifo)
    signame = signal.Signals(sig).name
    tag = "%s while rank 0 waits for the --json FIFO's reader (R=%d)" % (signame, ranks)
    args = SMALL + ["--quiet", "--json", fifo, "--dump-routing", os.path.join(d, "r.csv"),
                    "--dump-output", os.path.join(d, "y.npy")]
    job = Job(exe, ranks, args, d)
    pids = job.wait_ranks()
    if not ck.check(pids is not None, tag + ": every rank process appears", job.stderr()[-2000:]):
        job.kill()
        return
    # the run itself takes well under a second; after 2 s rank 0 can only be waiting for a reader,
    # sleeping between its attempts to open the FIFO
    if not ck.check(wait_syscall(pids[0], SLEEP_SYSCALLS, job, 2.0),
                    tag + ": rank 0 is seen waiting for the FIFO's reader",
                    "exit %s\n%s" % (job.proc.poll(), job.stderr()[-2000:])):
        job.kill()
        return
    for pid in pids.values():
        os.kill(pid, sig)
    ended = job.wait(END_WITHIN)
    if not ck.check(ended, tag + ": mpirun exits within %g s" % END_WITHIN, job.stderr()[-2000:]):
        job.kill()
        return
    lines = mt.own_stderr_lines(job.stderr())
    ck.equal(job.proc.returncode, 128 + sig, tag + ": exit status 128 + %d" % sig)
    ck.check(len(lines) == 1 and signame in lines[0] and "no output was written" in lines[0],
             tag + ": one line naming the signal and saying nothing was written", repr(lines))
    ck.equal(sorted(os.listdir(d)), ["a.fifo"], tag + ": nothing published, no temporary")
    check_gone(ck, tag, job, pids.values())
    print("%-34s exit %s: %s" % (tag, job.proc.returncode, lines))


WRITE_SYSCALLS = {1}  # x86_64 write


def during_write(ck, exe, root, name, ranks, sig):
    """A signal while rank 0 is writing: the CSV of --dump-routing goes to a FIFO whose reader has
    opened it but does not read yet, so the write blocks once the pipe is full (the CSV is about
    1 MB, a pipe holds 64 KiB). The signal must not stop the write: once the reader reads, every
    output is complete, published, and the status is 0."""
    d = os.path.join(root, name)
    os.makedirs(d)
    fifo = os.path.join(d, "r.fifo")
    os.mkfifo(fifo)
    signame = signal.Signals(sig).name
    tag = "%s while rank 0 writes to a full FIFO (R=%d)" % (signame, ranks)
    n = 20000
    args = ["--tokens", n, "--hidden", 8, "--experts", 4, "--iters", 1, "--warmup", 0, "--quiet",
            "--json", os.path.join(d, "a.json"), "--dump-routing", fifo,
            "--dump-output", os.path.join(d, "y.npy")]
    job = Job(exe, ranks, args, d)
    got, go = [], threading.Event()

    def read():
        with open(fifo, "rb") as fh:  # blocks until rank 0 opens the FIFO for writing
            go.wait(60)
            got.append(fh.read())
    t = threading.Thread(target=read, daemon=True)
    t.start()
    pids = job.wait_ranks()
    if not ck.check(pids is not None, tag + ": every rank process appears", job.stderr()[-2000:]):
        job.kill()
        go.set()
        return
    if not ck.check(wait_syscall(pids[0], WRITE_SYSCALLS, job),
                    tag + ": rank 0 is seen blocked writing to the FIFO",
                    "exit %s\n%s" % (job.proc.poll(), job.stderr()[-2000:])):
        job.kill()
        go.set()
        return
    names = sorted(os.listdir(d))
    ck.equal([f for f in names if ".moesim-tmp." not in f], ["r.fifo"],
             tag + ": nothing published before the write ends")
    ck.check(any(f.startswith("a.json.moesim-tmp.") for f in names),
             tag + ": the JSON waits in its temporary", repr(names))
    for pid in pids.values():
        os.kill(pid, sig)
    time.sleep(0.5)
    ck.check(job.proc.poll() is None, tag + ": the signal does not stop the write")
    go.set()
    t.join(30)
    ended = job.wait(END_WITHIN)
    if not ck.check(ended and got, tag + ": the FIFO is read to EOF and mpirun exits",
                    job.stderr()[-2000:]):
        job.kill()
        return
    err = job.stderr()
    ck.equal(job.proc.returncode, 0, tag + ": exit status 0 (the outputs are complete)")
    try:
        rows = got[0].decode().splitlines()
        ck.equal(rows[0], "token,choice,expert,gate,accepted,score,rerouted", tag + ": the CSV header")
        ck.equal(len(rows) - 1, n * 2, tag + ": every CSV row read from the FIFO")
        with open(os.path.join(d, "a.json")) as fh:
            ck.equal(json.load(fh)["config"]["ranks"], ranks, tag + ": --json published whole")
        ck.equal(np.load(os.path.join(d, "y.npy")).shape, (n, 8),
                 tag + ": --dump-output published whole")
    except (OSError, ValueError, KeyError, IndexError) as e:
        ck.check(False, tag + ": the outputs are whole (%s)" % e)
    lines = mt.own_stderr_lines(err)
    ck.check(any(signame in l and "arrived while the outputs were being written" in l and
                 "complete" in l for l in lines),
             tag + ": stderr says the signal arrived during the write and the outputs are complete",
             err[-2000:])
    ck.check(not [l for l in lines if "error" in l], tag + ": no error line", err[-2000:])
    ck.equal(sorted(os.listdir(d)), ["a.json", "r.fifo", "y.npy"],
             tag + ": the FIFO and the two files, no temporary")
    check_gone(ck, tag, job, pids.values())
    print("%-34s exit %s: %s" % (tag, job.proc.returncode, [l for l in lines if signame in l]))


def main():
    exe = mt.moesim_path()
    ck = mt.Checker("test_signals")
    root = mt.workdir()
    t0 = time.monotonic()
    cases = [
        ("term_all_R2", 2, signal.SIGTERM, None),
        ("int_all_R2", 2, signal.SIGINT, None),
        ("term_rank1_R2", 2, signal.SIGTERM, [1]),
        ("term_rank0_R2", 2, signal.SIGTERM, [0]),
        ("int_rank1_R2", 2, signal.SIGINT, [1]),
        ("term_all_R3", 3, signal.SIGTERM, None),
        ("term_rank2_R3", 3, signal.SIGTERM, [2]),
    ]
    for name, ranks, sig, targets in cases:
        ck.guard(name, stop_mid_run, ck, exe, root, name, ranks, sig, targets)
    ck.guard("mpirun", signal_mpirun, ck, exe, root)
    ck.guard("reader_term", waiting_for_reader, ck, exe, root, "reader_term_R2", 2,
             signal.SIGTERM)
    ck.guard("reader_int_R3", waiting_for_reader, ck, exe, root, "reader_int_R3", 3,
             signal.SIGINT)
    ck.guard("write_term", during_write, ck, exe, root, "write_term_R2", 2, signal.SIGTERM)
    ck.guard("write_int", during_write, ck, exe, root, "write_int_R2", 2, signal.SIGINT)
    ck.guard("write_term_R3", during_write, ck, exe, root, "write_term_R3", 3, signal.SIGTERM)
    print("total %.1f s" % (time.monotonic() - t0))
    ck.finish()


if __name__ == "__main__":
    main()
