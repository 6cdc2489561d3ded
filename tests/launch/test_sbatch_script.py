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
"""

import json
import os
import shlex
import tempfile

from launchtest import Checks, clean_env, fake_launcher, paths, recorded, run, say

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

c.done("sbatch-script")
