"""sbatch-script: launch/moesim.sbatch outside Slurm, and its job mode with a stand-in srun.

- --help exits 0 and names every option.
- --dry-run (no SLURM_* variables): exit 0; prints `run directory: ...` and the
  `+ srun --mpi=pmix --cpu-bind=cores --kill-on-bad-exit=1 MOESIM --json RUN/moesim.json ...`
  line with the moesim options last and in order; the default binary is build/moesim of the
  script's repository and the default run directory runs/moesim-dryrun; creates nothing.
- --dry-run with --launcher mpirun (--allow-run-as-root exactly when root, --bind-to core),
  --bind none/sockets, --mpi pmi2, --run-dir and --moesim, relative paths taken from the submit
  directory.
- Bad options (--launcher, --bind, --json, a missing value) and a real run outside a job exit 2.
- Job mode without Slurm: SLURM_JOB_ID and SLURM_SUBMIT_DIR set and a recording `srun` first on
  PATH that runs moesim as one process. The script finds SUBMIT/build/moesim, creates
  SUBMIT/runs/moesim-JOBID with command.txt (exactly the argv srun got), job.txt (job_id,
  exit_status=0), report.txt (moesim's report), moesim.json (config.ranks == 1); a second run
  into the same directory exits 2; a failing moesim's exit status (2) is the script's, recorded
  in job.txt, with moesim's error in stderr.txt.
- What a failing run leaves, with stand-ins that print after a non-zero exit what the real ones
  print (Slurm 22.05's srun: "srun: error: HOST: task 0: Exited with exit code N" and the step's
  termination; Open MPI 4.1's mpirun: its 11-line notice): for a refusal (--bogus, 2) stderr.txt
  and the job's stderr hold exactly one `moesim: error:` line and none of those; for a status
  moesim does not explain in one line (1) the notice stays.
- SIGTERM to every process of the job (what scancel and the time limit do), once moesim catches
  it: the script waits, exits 143, job.txt has exit_status=143, the job's stderr has moesim's
  one `moesim: interrupted by SIGTERM` line and says the job got SIGTERM.
"""

import json
import os
import shlex
import signal
import stat
import tempfile

from launchtest import (Checks, catches, clean_env, fake_launcher, finish, paths,
                        processes_running, recorded, run, say, start, wait_until)

moesim, launch = paths()
script = os.path.join(launch, "moesim.sbatch")
repo = os.path.dirname(launch)
root = os.geteuid() == 0
c = Checks()
tiny = ["--tokens", "64", "--hidden", "8", "--iters", "1", "--warmup", "0"]


def after(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


with tempfile.TemporaryDirectory(prefix="moesim-sbatch-") as tmp:
    env = clean_env()

    r = run([script, "--help"], env=env)
    c.check(r.returncode == 0 and r.stdout.startswith("Usage:"), "--help exits 0 with usage",
            r.describe())
    for opt in ("--run-dir", "--moesim", "--launcher", "--mpi", "--bind", "--dry-run",
                "-h, --help", "command.txt", "job.txt", "report.txt", "moesim.json"):
        c.check(opt in r.stdout, "--help names %s" % opt)

    # --dry-run outside Slurm, defaults
    r = run([script, "--dry-run", "--", *tiny], env=env, cwd=tmp)
    argv = r.plus_line("stdout") or []
    run_dir = os.path.join(tmp, "runs", "moesim-dryrun")
    default_bin = os.path.join(repo, "build", "moesim")
    c.check(r.returncode == 0 and argv, "--dry-run exits 0 and prints a + line", r.describe())
    c.check(argv[:4] == ["srun", "--mpi=pmix", "--cpu-bind=cores", "--kill-on-bad-exit=1"],
            "--dry-run: srun --mpi=pmix --cpu-bind=cores --kill-on-bad-exit=1", str(argv))
    c.check(len(argv) > 4 and os.path.normpath(argv[4]) == default_bin,
            "--dry-run: default binary is the repository's build/moesim", str(argv))
    c.check(argv[5:7] == ["--json", os.path.join(run_dir, "moesim.json")] and argv[7:] == tiny,
            "--dry-run: --json RUN_DIR/moesim.json, then the moesim options in order", str(argv))
    c.check("run directory: %s" % run_dir in r.stdout, "--dry-run names the run directory",
            r.describe())
    c.check(os.listdir(tmp) == [], "--dry-run creates nothing", str(os.listdir(tmp)))

    # --dry-run variants
    variants = [
        (["--launcher", "mpirun"],
         lambda a: a[0] == "mpirun" and ("--allow-run-as-root" in a) == root
         and after(a, "--bind-to") == "core" and "srun" not in a,
         "--launcher mpirun: mpirun [--allow-run-as-root as root] --bind-to core"),
        (["--launcher=mpirun", "--bind", "none"],
         lambda a: a[0] == "mpirun" and after(a, "--bind-to") == "none", "mpirun --bind none"),
        (["--bind", "none"], lambda a: "--cpu-bind=none" in a, "srun --bind none"),
        (["--bind=sockets"], lambda a: "--cpu-bind=sockets" in a, "srun --bind sockets"),
        (["--mpi", "pmi2"], lambda a: "--mpi=pmi2" in a and "--mpi=pmix" not in a, "--mpi pmi2"),
        (["--run-dir", "out/my run", "--moesim", "bin/moesim"],
         lambda a: after(a, "--json") == os.path.join(tmp, "out/my run/moesim.json")
         and os.path.join(tmp, "bin/moesim") in a,
         "relative --run-dir (with a space) and --moesim are taken from the submit directory"),
        (["--moesim=" + moesim, "--run-dir=" + os.path.join(tmp, "abs")],
         lambda a: moesim in a and after(a, "--json") == os.path.join(tmp, "abs", "moesim.json"),
         "--moesim=PATH and --run-dir=DIR"),
    ]
    for opts, ok, what in variants:
        r = run([script, "--dry-run", *opts, "--", "--tokens", "64"], env=env, cwd=tmp)
        argv = r.plus_line("stdout") or []
        c.check(r.returncode == 0 and argv and ok(argv) and argv[-2:] == ["--tokens", "64"],
                "--dry-run " + what, r.describe())
    c.check(os.listdir(tmp) == [], "no --dry-run creates anything", str(os.listdir(tmp)))

    # Refusals
    for bad in (["--launcher", "mpiexec"], ["--bind", "threads"], ["--json", "x.json"],
                ["--", "--json=x.json"], ["--run-dir"], ["--mpi", ""], []):
        r = run([script, *bad], env=env, cwd=tmp)
        c.check(r.returncode == 2 and "moesim.sbatch:" in r.stderr,
                "%s exits 2 with a message" % (" ".join(bad) or "a real run outside a job"),
                r.describe())
    c.check("sbatch" in r.stderr, "outside a job, the message says to submit with sbatch",
            r.stderr)
    c.check(os.listdir(tmp) == [], "refusals create nothing", str(os.listdir(tmp)))

    # Job mode with a stand-in srun: the script's own work, checked without Slurm
    submit = os.path.join(tmp, "submit")
    os.makedirs(os.path.join(submit, "build"))
    os.symlink(moesim, os.path.join(submit, "build", "moesim"))
    fake_bin = os.path.join(tmp, "fakebin")
    record = os.path.join(tmp, "srun-argv.txt")
    fake_launcher(fake_bin, "srun", record, then_exec=True)
    job_env = clean_env(PATH=fake_bin + os.pathsep + os.environ["PATH"], SLURM_JOB_ID="4242",
                        SLURM_SUBMIT_DIR=submit, SLURM_NTASKS="1", SLURM_JOB_NAME="moesim")
    r = run([script, *tiny], env=job_env, cwd="/")
    say("job mode with a stand-in srun: exit %d in %.1f s" % (r.returncode, r.elapsed))
    run_dir = os.path.join(submit, "runs", "moesim-4242")
    c.check(r.returncode == 0, "job mode exits 0", r.describe())
    files = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
    c.check(files == ["command.txt", "job.txt", "moesim.json", "report.txt", "stderr.txt"],
            "job mode fills SUBMIT/runs/moesim-JOBID", str(files))
    if "command.txt" in files:
        with open(os.path.join(run_dir, "command.txt")) as f:
            cmd = shlex.split(f.read())
        c.check(cmd == recorded(record), "command.txt is exactly the argv srun got",
                "%s\n%s" % (cmd, recorded(record)))
        c.check(cmd[4:7] == [os.path.join(submit, "build", "moesim"), "--json",
                             os.path.join(run_dir, "moesim.json")],
                "job mode: SUBMIT/build/moesim --json RUN_DIR/moesim.json", str(cmd))
    if "job.txt" in files:
        with open(os.path.join(run_dir, "job.txt")) as f:
            job = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        c.check(job.get("job_id") == "4242" and job.get("exit_status") == "0"
                and job.get("launcher") == "srun", "job.txt: job_id, launcher, exit_status=0",
                str(job))
    if "report.txt" in files:
        with open(os.path.join(run_dir, "report.txt")) as f:
            report = f.read()
        c.check("moesim" in report and report in r.stdout,
                "report.txt holds moesim's report, also printed in the job output", report[:500])
    if "moesim.json" in files:
        with open(os.path.join(run_dir, "moesim.json")) as f:
            doc = json.load(f)
        c.check(doc["config"]["ranks"] == 1 and "drops" in doc, "moesim.json: ranks 1, drops")

    r = run([script, *tiny], env=job_env, cwd="/")
    c.check(r.returncode == 2 and "already holds a run" in r.stderr,
            "a second run into the same run directory exits 2", r.describe())

    # moesim's failure is the job's failure
    r = run([script, "--run-dir", "runs/bad", "--", "--tokens", "-5"], env=job_env, cwd="/")
    bad_dir = os.path.join(submit, "runs", "bad")
    c.check(r.returncode == 2, "a moesim refusal (exit 2) is the script's exit status",
            r.describe())
    if os.path.isdir(bad_dir):
        with open(os.path.join(bad_dir, "job.txt")) as f:
            c.check("exit_status=2\n" in f.read(), "job.txt records exit_status=2")
        with open(os.path.join(bad_dir, "stderr.txt")) as f:
            err = f.read()
        c.check("--tokens" in err and err in r.stderr,
                "stderr.txt holds moesim's error, also in the job output", err)
    else:
        c.check(False, "a failing run still gets its run directory")

    # What a failing run leaves. Stand-ins that run moesim (the first executable argument) and,
    # when it exits non-zero (or with FAKE_EXIT's status), print what the real launcher prints.
    srun_notice = ('srun: error: node01: task 0: Exited with exit code $st\n'
                   'srun: launch/slurm: _step_signal: Terminating StepId=4242.0\n')
    dash = "-" * 74
    mpirun_notice = "\n".join([
        dash, "Primary job  terminated normally, but 1 process returned",
        "a non-zero exit code. Per user-direction, the job has been aborted.", dash, dash,
        "mpirun detected that one or more processes exited with non-zero status, thus causing",
        "the job to be terminated. The first process to do so was:", "",
        "  Process name: [[4242,1],0]", "  Exit code:    $st", dash, ""])
    notice_bin = os.path.join(tmp, "noticebin")
    os.makedirs(notice_bin)
    for name, notice in (("srun", srun_notice), ("mpirun", mpirun_notice)):
        with open(os.path.join(notice_bin, name), "w") as f:
            f.write("#!/bin/sh\n"
                    'while [ $# -gt 0 ] && ! { [ -f "$1" ] && [ -x "$1" ]; }; do shift; done\n'
                    '"$@"; st=${FAKE_EXIT:-$?}\n'
                    '[ "$st" = 0 ] || printf \'%%s\' "%s" >&2\n'
                    'exit "$st"\n' % notice)
        os.chmod(os.path.join(notice_bin, name), 0o755)
    notice_env = dict(job_env, PATH=notice_bin + os.pathsep + os.environ["PATH"])
    for launcher in ("srun", "mpirun"):
        for what, opts, extra, status in (("a refusal", ["--", "--bogus"], {}, 2),
                                          ("status 1", ["--", *tiny], {"FAKE_EXIT": "1"}, 1)):
            rdir = "runs/%s-%d" % (launcher, status)
            r = run([script, "--launcher", launcher, "--run-dir", rdir, *opts],
                    env=dict(notice_env, **extra), cwd="/")
            label = "%s under a stand-in %s" % (what, launcher)
            c.check(r.returncode == status, "%s: exit %d" % (label, status), r.describe())
            errfile = os.path.join(submit, rdir, "stderr.txt")
            err = open(errfile).read() if os.path.exists(errfile) else ""
            noise = ("Exited with exit code", "Terminating StepId", "non-zero exit code",
                     "non-zero status", "Primary job")
            if status == 2:
                c.check(err.splitlines() == ["moesim: error: unknown option '--bogus' (see --help)"],
                        label + ": stderr.txt is exactly moesim's one error line", err)
                job_err = [line for line in r.stderr.splitlines()]
                c.check(sum(line.startswith("moesim: error:") for line in job_err) == 1 and
                        not any(n in r.stderr for n in noise),
                        label + ": the job's stderr has one moesim: error: line and no notice",
                        r.describe())
            else:
                kept = "Exited with exit code 1" if launcher == "srun" else "Exit code:    1"
                c.check(kept in err and kept in r.stderr,
                        label + ": the launcher's notice is kept (%s)" % kept, err)

    # SIGTERM to every process of the job, as scancel and the time limit send it
    long_run = ["--tokens", "4096", "--hidden", "64", "--iters", "100000", "--warmup", "0",
                "--quiet"]
    proc = start([script, "--run-dir", "runs/cancelled", "--", *long_run], env=job_env, cwd="/")
    ranks = wait_until(lambda: (lambda p: p if p and catches(p[0], signal.SIGTERM) else None)(
        processes_running(proc.pid, moesim)), timeout=60)
    if c.check(ranks is not None, "SIGTERM to the job: moesim runs and catches SIGTERM"):
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    r = finish(proc)
    say("SIGTERM to the job's processes: exit %d in %.1f s" % (r.returncode, r.elapsed))
    c.check(r.returncode == 143, "SIGTERM to the job: the script exits 143", r.describe())
    jobfile = os.path.join(submit, "runs", "cancelled", "job.txt")
    c.check(os.path.exists(jobfile) and "exit_status=143\n" in open(jobfile).read(),
            "SIGTERM to the job: job.txt records exit_status=143")
    c.check(sum(line.startswith("moesim: interrupted by SIGTERM") for line in
                r.stderr.splitlines()) == 1 and "(the job got SIGTERM)" in r.stdout,
            "SIGTERM to the job: one moesim: interrupted line, and the last line says so",
            r.describe())

c.done("sbatch-script")
