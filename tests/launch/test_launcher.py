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
"""

import json
import os
import shutil
import subprocess
import tempfile

from launchtest import Checks, clean_env, cores, fake_launcher, paths, recorded, run, say, skip

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

c.done("launcher")
