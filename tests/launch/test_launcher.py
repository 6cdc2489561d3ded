"""launcher: launch/moesim-local run for real under mpirun, and its options.

- Real runs at -n 1, 2 and cores+1 (3 on a 2-core machine), tiny sizes, without Open MPI's root
  variables in the environment: exit 0; the printed `+ mpirun ...` line has -n R,
  --allow-run-as-root exactly when running as root, --oversubscribe (with --bind-to none) exactly
  when R > cores, --bind-to core --map-by core when R fits; the moesim options after it; the JSON
  exists with config.ranks == R.
- The printed line is the exact argv mpirun received (a recording mpirun first on PATH), an
  argument with a space included.
- --dry-run prints the line, exits 0, and runs nothing (the recording mpirun never runs, no JSON).
- --help exits 0 and names every option; bad -n values and a missing binary exit 2 and run nothing.
- --hostfile: passed through; the hostfile's slots, not the cores, decide oversubscription; the
  default -n is the total slots; a real run on a `localhost slots=C` hostfile.
- As a non-root user (setpriv, when the test runs as root): no --allow-run-as-root.
- Errors and signals, for real: a refused run (`-- --bogus`) at -n 1 and 2 exits 2 with stderr
  holding the `+ mpirun` line and exactly one `moesim: error:` line, none of Open MPI's
  "returned a non-zero exit code" notice, and nothing on stdout. Runs stopped by a signal (-n 2,
  a long run, signalled once moesim's SIGINT/SIGTERM handlers are installed): SIGTERM to one
  moesim rank, SIGINT to the launcher's process group (what a terminal's Ctrl-C sends) and
  SIGTERM to the launcher exit 143, 130 and 143 with exactly one `moesim: interrupted by ...`
  line and no notice. A real failure, SIGKILL to one rank, still shows Open MPI's notice
  ("mpirun noticed that process rank N ... exited on signal 9") and exits non-zero (137).
"""

import json
import os
import shutil
import subprocess
import tempfile

import signal

from launchtest import (Checks, catches, clean_env, cores, fake_launcher, finish, paths,
                        processes_running, recorded, run, say, skip, start, wait_until)

moesim, launch = paths()
local = os.path.join(launch, "moesim-local")
if shutil.which("mpirun") is None:
    skip("mpirun is not on PATH (Debian: openmpi-bin)")
ncores = cores()
root = os.geteuid() == 0
c = Checks()
tiny = ["--tokens", "64", "--hidden", "8", "--iters", "1", "--warmup", "0", "--quiet"]


def expect_binding(argv, ranks, slots, what):
    """The flags the launcher promises for R ranks on `slots` places."""
    c.check(argv[:3] == ["mpirun", "-n", str(ranks)], "%s: starts with mpirun -n %d" % (what, ranks),
            str(argv))
    c.check(("--allow-run-as-root" in argv) == root,
            "%s: --allow-run-as-root exactly when root (root: %s)" % (what, root), str(argv))
    over = ranks > slots
    c.check(("--oversubscribe" in argv) == over,
            "%s: --oversubscribe exactly when %d ranks > %d" % (what, ranks, slots), str(argv))
    bind = argv[argv.index("--bind-to") + 1] if "--bind-to" in argv else None
    c.check(bind == ("none" if over else "core"),
            "%s: --bind-to %s" % (what, "none" if over else "core"), str(argv))


with tempfile.TemporaryDirectory(prefix="moesim-launch-") as tmp:
    env = clean_env()

    # Real runs: fitting, and one rank more than the cores
    for ranks in sorted({1, min(2, ncores), ncores + 1}):
        out = os.path.join(tmp, "r%d.json" % ranks)
        r = run([local, "-n", str(ranks), "--moesim", moesim, "--", *tiny,
                 "--experts", str(max(8, ranks)), "--json", out], env=env)
        say("-n %d on %d cores: exit %d in %.1f s" % (ranks, ncores, r.returncode, r.elapsed))
        if not c.check(r.returncode == 0, "-n %d exits 0" % ranks, r.describe()):
            continue
        argv = r.plus_line() or []
        c.check(bool(argv), "-n %d prints the + mpirun line" % ranks, r.describe())
        if argv:
            expect_binding(argv, ranks, ncores, "-n %d" % ranks)
            if ranks <= ncores:
                c.check("--map-by" in argv and argv[argv.index("--map-by") + 1] == "core",
                        "-n %d: --map-by core" % ranks, str(argv))
            c.check(argv[-len(tiny) - 4:-4] == tiny and argv[-2:] == ["--json", out],
                    "-n %d: moesim options passed through in order" % ranks, str(argv))
            exe = [a for a in argv if a.endswith("moesim")]
            c.check(len(exe) == 1 and os.path.samefile(exe[0], moesim),
                    "-n %d: runs the given binary" % ranks, str(argv))
        if c.check(os.path.exists(out), "-n %d writes the JSON" % ranks, r.describe()):
            with open(out) as f:
                got = json.load(f)["config"]["ranks"]
            c.check(got == ranks, "-n %d: JSON config.ranks == %d (got %s)" % (ranks, ranks, got))

    # The printed line is what mpirun received, quoting included
    fake_bin = os.path.join(tmp, "fakebin")
    record = os.path.join(tmp, "argv.txt")
    fake_launcher(fake_bin, "mpirun", record)
    fake_env = clean_env(PATH=fake_bin + os.pathsep + os.environ["PATH"])
    spaced = os.path.join(tmp, "with space", "out.json")
    r = run([local, "-n", "2", "--moesim", moesim, "--tokens", "64", "--json", spaced], env=fake_env)
    c.check(r.returncode == 0 and r.plus_line() is not None and r.plus_line() == recorded(record),
            "the printed + line is exactly the argv mpirun got", "%s\nrecorded: %s" % (
                r.describe(), recorded(record)))

    # --dry-run: prints, runs nothing
    os.remove(record)
    out = os.path.join(tmp, "dry.json")
    for e, what in ((fake_env, "recording mpirun"), (env, "real mpirun")):
        r = run([local, "-n", "2", "--moesim", moesim, "--dry-run", "--json", out], env=e)
        c.check(r.returncode == 0, "--dry-run exits 0 (%s)" % what, r.describe())
        argv = r.plus_line()
        c.check(argv is not None and argv[:3] == ["mpirun", "-n", "2"] and argv[-2:] == ["--json", out],
                "--dry-run prints the mpirun line (%s)" % what, r.describe())
    c.check(recorded(record) is None, "--dry-run does not start mpirun", str(recorded(record)))
    c.check(not os.path.exists(out), "--dry-run writes no JSON")

    # --help
    r = run([local, "--help"], env=env)
    c.check(r.returncode == 0 and r.stdout.startswith("Usage:"), "--help exits 0 with usage",
            r.describe())
    for opt in ("-n, --ranks", "--hostfile", "--moesim", "--dry-run", "-h, --help"):
        c.check(opt in r.stdout, "--help names %s" % opt)

    # Bad -n values and a missing binary: exit 2, nothing run
    for bad in (["-n", "0"], ["-n", "abc"], ["-n", "-3"], ["-n", "1.5"], ["-n", ""], ["-n"],
                ["--ranks", "0000000"], ["--moesim", os.path.join(tmp, "nonexistent")],
                ["--hostfile", os.path.join(tmp, "nonexistent")]):
        args = bad if "--moesim" in bad else ["--moesim", moesim, *bad]
        r = run([local, *args], env=fake_env)
        c.check(r.returncode == 2 and "moesim-local:" in r.stderr and recorded(record) is None,
                "%s exits 2 with a message and runs nothing" % " ".join(bad), r.describe())

    # --hostfile: slots decide; default -n is the total
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write("# two hosts\nnodeA slots=4   # first\n\nnodeB slots=4\n")
    for ranks, expect_n in ((None, 8), (8, 8), (9, 9)):
        nflag = [] if ranks is None else ["-n", str(ranks)]
        r = run([local, "--hostfile", hosts, *nflag, "--moesim", moesim, "--dry-run"], env=env)
        argv = r.plus_line() or []
        what = "--hostfile with %s" % ("-n %d" % ranks if ranks else "no -n")
        c.check(r.returncode == 0 and "--hostfile" in argv and
                argv[argv.index("--hostfile") + 1] == hosts, what + ": passed to mpirun", r.describe())
        if argv:
            expect_binding(argv, expect_n, 8, what)
    with open(hosts, "w") as f:
        f.write("localhost slots=%d\n" % ncores)
    out = os.path.join(tmp, "hostfile.json")
    r = run([local, "--hostfile", hosts, "--moesim", moesim, "--", *tiny, "--json", out], env=env)
    say("--hostfile localhost slots=%d: exit %d in %.1f s" % (ncores, r.returncode, r.elapsed))
    if c.check(r.returncode == 0 and os.path.exists(out), "a real run with --hostfile", r.describe()):
        with open(out) as f:
            c.check(json.load(f)["config"]["ranks"] == ncores,
                    "--hostfile run: config.ranks == the slots (%d)" % ncores)

    # Not root: no --allow-run-as-root
    setpriv = shutil.which("setpriv")
    if root and setpriv:
        r = run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", local, "-n", "1",
                 "--moesim", "/bin/true", "--dry-run"], env=env, cwd="/")
        if r.returncode == 126 or "Permission denied" in r.stderr:
            say("not checked as a non-root user: %s is not readable by uid 65534" % local)
        else:
            argv = r.plus_line() or []
            c.check(r.returncode == 0 and argv[:3] == ["mpirun", "-n", "1"] and
                    "--allow-run-as-root" not in argv,
                    "as uid 65534: no --allow-run-as-root", r.describe())
    elif not root:
        say("running as a user: the non-root line was checked by the real runs above")

# Errors and signals: what the user is left with
NOTICE = ("non-zero exit code", "non-zero status", "Primary job", "Per user-direction")


def stderr_lines(r):
    """stderr without the `+ mpirun` line."""
    return [line for line in r.stderr.splitlines() if not line.startswith("+ ")]


def no_notice(r, what):
    c.check(not any(n in r.stderr for n in NOTICE),
            "%s: none of Open MPI's non-zero-exit notice" % what, r.describe())


with tempfile.TemporaryDirectory(prefix="moesim-launch-") as tmp:
    env = clean_env()
    for ranks in (1, 2):
        r = run([local, "-n", str(ranks), "--moesim", moesim, "--", "--bogus"], env=env, cwd=tmp)
        what = "refused run (--bogus) at -n %d" % ranks
        say("%s: exit %d in %.1f s" % (what, r.returncode, r.elapsed))
        c.check(r.returncode == 2, what + ": exit 2", r.describe())
        c.check(r.plus_line() is not None and r.plus_line()[:3] == ["mpirun", "-n", str(ranks)],
                what + ": the + mpirun line is still printed", r.describe())
        lines = stderr_lines(r)
        c.check(len(lines) == 1 and lines[0].startswith("moesim: error: ") and "--bogus" in lines[0],
                what + ": stderr is the + line and exactly one moesim: error: line", r.describe())
        no_notice(r, what)
        c.check(r.stdout == "", what + ": nothing on stdout", r.describe())

    # A run long enough to be signalled (about 20 ms a step, at most 100000 steps)
    long_run = ["--tokens", "4096", "--hidden", "64", "--iters", "100000", "--warmup", "0",
                "--quiet", "--json", os.path.join(tmp, "never.json")]

    def running(what):
        """Start the launcher on the long run; its moesim ranks, once they catch SIGINT and
        SIGTERM (None, after failing the check, if they never do)."""
        proc = start([local, "-n", "2", "--moesim", moesim, "--", *long_run], env=env, cwd=tmp)
        ranks = wait_until(lambda: (lambda p: p if len(p) == 2 and all(
            catches(x, signal.SIGINT, signal.SIGTERM) for x in p) else None)(
            processes_running(proc.pid, moesim)), timeout=60)
        if not c.check(ranks is not None, what + ": two moesim ranks with signal handlers"):
            os.killpg(proc.pid, signal.SIGKILL)
            say(finish(proc).describe())
            return proc, None
        return proc, ranks

    interrupts = [
        ("SIGTERM to one moesim rank", lambda proc, ranks: os.kill(ranks[-1], signal.SIGTERM),
         143, "SIGTERM"),
        ("SIGINT to the launcher's process group (Ctrl-C)",
         lambda proc, ranks: os.killpg(proc.pid, signal.SIGINT), 130, "SIGINT"),
        ("SIGTERM to the launcher", lambda proc, ranks: os.kill(proc.pid, signal.SIGTERM),
         143, "SIGTERM"),
    ]
    for what, send, status, name in interrupts:
        proc, ranks = running(what)
        if ranks is None:
            continue
        send(proc, ranks)
        r = finish(proc)
        say("%s: exit %d in %.1f s" % (what, r.returncode, r.elapsed))
        c.check(r.returncode == status, "%s: exit %d" % (what, status), r.describe())
        lines = stderr_lines(r)
        c.check(len(lines) == 1 and lines[0].startswith("moesim: interrupted by %s " % name),
                what + ": stderr is the + line and exactly one moesim: interrupted line",
                r.describe())
        no_notice(r, what)
        c.check(not os.path.exists(os.path.join(tmp, "never.json")), what + ": no JSON written")

    # A real failure keeps Open MPI's notice
    what = "SIGKILL to one moesim rank"
    proc, ranks = running(what)
    if ranks is not None:
        os.kill(ranks[-1], signal.SIGKILL)
        r = finish(proc)
        say("%s: exit %d in %.1f s" % (what, r.returncode, r.elapsed))
        c.check(r.returncode == 128 + signal.SIGKILL, what + ": exit 137 (non-zero)", r.describe())
        c.check("mpirun noticed that process rank" in r.stderr and "exited on signal 9" in r.stderr,
                what + ": Open MPI's notice of the killed rank is shown", r.describe())
    c.check(not processes_running(os.getpid(), moesim), "no moesim process is left behind")

c.done("launcher")
