"""slurm: launch/moesim.sbatch submitted for real to a single-node Slurm brought up for the test.

Bring-up (docs/launch.md, "The Slurm test"), all in a private temporary directory:
- Debian's slurm-wlm and munge, installed with apt-get when missing (only as root with apt-get;
  otherwise the test is skipped, with the reason);
- a private munge key (mungekey, owned by munge) and munged run as the munge user in the
  foreground, on its own socket, which slurm.conf names (AuthInfo=socket=...): the machine's own
  munge, if any, is neither used nor touched;
- a minimal slurm.conf: SlurmctldHost=HOST(127.0.0.1), NodeName=HOST NodeAddr=127.0.0.1 with the
  CPUs `slurmd -C` reports, proctrack/linuxproc, task/none, select/cons_tres, MpiDefault=pmix,
  SlurmUser=root, free ports, state, spool and logs in the temporary directory;
- slurmctld -D and slurmd -D started with -f that file (and SLURM_CONF for the clients); wait
  until `scontrol show node` says IDLE (at most 60 s).
Then two jobs from a submit directory whose build/moesim links to the binary under test, so the
script's defaults are used: `sbatch --ntasks 2 launch/moesim.sbatch -- tiny options` (srun
--mpi=pmix) and the same with --launcher mpirun --run-dir runs/via-mpirun. `scontrol show job`
is polled until each ends (at most 120 s). Each must end COMPLETED with exit code 0:0, and its run
directory hold moesim.json with config.ranks == 2 and the drops section, command.txt with the
launcher line (srun --mpi=pmix --cpu-bind=cores / mpirun --bind-to core) and
SUBMIT/build/moesim --json RUN_DIR/moesim.json, job.txt with job_id, ntasks=2 and exit_status=0,
and report.txt with moesim's report. On failure it prints the job's output and the daemons' logs.
Teardown always runs (also on SIGTERM from meson's timeout): jobs that have not ended are
cancelled, the daemons this test started are stopped by their process ids and the temporary directory removed (kept, for a look, when
MOESIM_KEEP_SLURM_DIR is set in the environment).
"""

import glob
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from launchtest import Checks, paths, say, skip

moesim, launch = paths()
script = os.path.join(launch, "moesim.sbatch")
c = Checks()

SBIN = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
NEEDED = {  # program: the Debian package that ships it
    "slurmctld": "slurmctld", "slurmd": "slurmd", "slurmstepd": "slurmd",
    "sbatch": "slurm-client", "scontrol": "slurm-client", "srun": "slurm-client",
    "scancel": "slurm-client", "munged": "munge", "munge": "munge", "unmunge": "munge"}
NODE_TIMEOUT = 60   # s for slurmd to register and the node to become idle
JOB_TIMEOUT = 120   # s for each job to end
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def which(prog):
    return shutil.which(prog, path=os.pathsep.join([os.environ.get("PATH", "")] + SBIN))


# ---------------------------------------------------------------------------------------------
# Packages

def ensure_packages():
    missing = sorted({pkg for prog, pkg in NEEDED.items() if which(prog) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        skip("Debian packages %s are missing and installing them needs root "
             "(as root: apt-get install slurm-wlm munge)" % " ".join(missing))
    apt = which("apt-get")
    if apt is None:
        skip("Debian packages %s are missing and there is no apt-get to install them"
             % " ".join(missing))
    say("installing slurm-wlm and munge with apt-get (missing: %s)" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd, limit in (([apt, "update", "-qq"], 300),
                       ([apt, "install", "-y", "-qq", "--no-install-recommends",
                         "slurm-wlm", "munge"], 600)):
        try:
            p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            skip("%s did not finish in %d s" % (shlex.join(cmd), limit))
        if p.returncode != 0:
            skip("%s failed (exit %d), so Slurm cannot be brought up here:\n%s" % (
                shlex.join(cmd), p.returncode, (p.stdout + p.stderr)[-2000:]))
    still = sorted({pkg for prog, pkg in NEEDED.items() if which(prog) is None})
    if still:
        print("FAIL: after apt-get install, still missing programs of %s" % " ".join(still))
        sys.exit(1)
    say("installed")


# ---------------------------------------------------------------------------------------------
# Daemons this test starts, and their teardown

started = []  # (name, Popen), in start order
top = None
submitted = []  # job ids, for scancel at teardown
client_env = None  # the environment of Slurm's clients (SLURM_CONF)


def cancel_jobs():
    """scancel the test's jobs that have not ended (a failure or a timeout mid-job), so no step
    outlives the daemons, and wait for them to end (at most 15 s)."""
    if not submitted or client_env is None or not any(
            n == "slurmctld" and p.poll() is None for n, p in started):
        return
    live = [j for j in submitted if field(scontrol(client_env, "show", "job", j), "JobState")
            not in ENDED | {None}]
    if not live:
        return
    subprocess.run([which("scancel"), *live], env=client_env, capture_output=True, timeout=30)
    say("cancelled job(s) %s" % " ".join(live))
    end = time.monotonic() + 15
    while time.monotonic() < end and any(
            field(scontrol(client_env, "show", "job", j), "JobState") not in ENDED | {None}
            for j in live):
        time.sleep(0.25)


def stop_all():
    try:
        cancel_jobs()
    except (OSError, subprocess.SubprocessError) as exc:
        say("could not cancel the jobs: %s" % exc)
    for name, proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            say("stopped %s (pid %d)" % (name, proc.pid))
    started.clear()
    if top and os.path.isdir(top):
        if os.environ.get("MOESIM_KEEP_SLURM_DIR"):
            say("kept %s (MOESIM_KEEP_SLURM_DIR is set)" % top)
        else:
            shutil.rmtree(top, ignore_errors=True)
            say("removed %s" % top)


def on_signal(signum, _frame):
    print("killed by signal %d: tearing down" % signum, flush=True)
    raise SystemExit(1)


def start(name, cmd, log, **kw):
    out = open(log, "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            **kw)
    out.close()
    started.append((name, proc))
    say("started %s (pid %d): %s" % (name, proc.pid, shlex.join(cmd)))
    return proc


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError as exc:
        return "(cannot read %s: %s)" % (path, exc)
    return "\n".join(text[-lines:])


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_for(what, test, limit, procs=()):
    """Poll test() every 0.25 s until it returns a true value; fail after `limit` seconds or when
    one of `procs` (name, Popen, log) exits."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = test()
        if got:
            return got
        for name, proc, log in procs:
            if proc.poll() is not None:
                fail_with("%s exited (status %d) while waiting for %s; its log:\n%s" % (
                    name, proc.returncode, what, tail(log)))
        time.sleep(0.25)
    fail_with("no %s after %d s" % (what, limit))


def fail_with(msg):
    print("FAIL: " + msg, flush=True)
    dump_logs()
    sys.exit(1)


def dump_logs():
    if not top:
        return
    for log in sorted(glob.glob(os.path.join(top, "*", "*.log"))):
        print("--- %s (last 40 lines)\n%s" % (os.path.relpath(log, top), tail(log)), flush=True)


# ---------------------------------------------------------------------------------------------
# Bring-up

def bring_up_munge(mdir):
    munge_pw = pwd.getpwnam("munge")
    as_munge = {"user": munge_pw.pw_uid, "group": munge_pw.pw_gid, "extra_groups": []}
    os.chown(mdir, munge_pw.pw_uid, munge_pw.pw_gid)
    os.chmod(mdir, 0o711)  # munged wants its socket directory searchable by all, not listable
    key = os.path.join(mdir, "munge.key")
    mungekey = which("mungekey")
    if mungekey:
        subprocess.run([mungekey, "--create", "--keyfile=" + key], check=True, **as_munge)
    else:  # munge < 0.5.14 has no mungekey; its create-munge-key writes only /etc/munge
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, munge_pw.pw_uid, munge_pw.pw_gid)
    os.chmod(key, 0o400)
    sock = os.path.join(mdir, "munge.socket")
    log = os.path.join(mdir, "munged.log")
    proc = start("munged", [which("munged"), "--foreground", "--key-file=" + key,
                            "--socket=" + sock, "--pid-file=" + os.path.join(mdir, "munged.pid"),
                            "--seed-file=" + os.path.join(mdir, "munged.seed"),
                            "--log-file=" + log], log, **as_munge)
    wait_for("munge socket", lambda: os.path.exists(sock), 15, [("munged", proc, log)])
    cred = subprocess.run([which("munge"), "-n", "-S", sock], capture_output=True, check=True)
    check = subprocess.run([which("unmunge"), "-S", sock], input=cred.stdout,
                           capture_output=True)
    if check.returncode != 0:
        fail_with("munge round trip failed: %s" % check.stderr.decode(errors="replace"))
    say("munge works (munge | unmunge on %s)" % sock)
    return sock


def node_hardware(host):
    """The node line's hardware fields as slurmd -C reports them, or CPUs=nproc."""
    fields = ["CPUs=%d" % len(os.sched_getaffinity(0))]
    p = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True)
    if p.returncode == 0:
        for line in p.stdout.splitlines():
            if line.startswith("NodeName="):
                keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                got = [kv for kv in line.split() if kv.split("=")[0] in keep]
                if any(kv.startswith("CPUs=") for kv in got):
                    fields = got
    return " ".join(fields)


def write_conf(sdir, host, sock):
    ctld_port, slurmd_port = free_ports(2)
    conf = os.path.join(sdir, "slurm.conf")
    lines = [
        "ClusterName=moesimtest",
        "SlurmctldHost=%s(127.0.0.1)" % host,
        "SlurmctldPort=%d" % ctld_port,
        "SlurmdPort=%d" % slurmd_port,
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "AuthInfo=socket=%s" % sock,
        "StateSaveLocation=%s/state" % sdir,
        "SlurmdSpoolDir=%s/spool" % sdir,
        "TmpFS=%s/tmp" % sdir,  # where the pmix plugin puts its per-step directories
        "SlurmctldPidFile=%s/slurmctld.pid" % sdir,
        "SlurmdPidFile=%s/slurmd.pid" % sdir,
        "SlurmctldLogFile=%s/slurmctld.log" % sdir,
        "SlurmdLogFile=%s/slurmd.log" % sdir,
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=pmix",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "NodeName=%s NodeAddr=127.0.0.1 %s State=UNKNOWN" % (host, node_hardware(host)),
        "PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP" % host,
    ]
    for d in ("state", "spool", "tmp"):
        os.makedirs(os.path.join(sdir, d), mode=0o755)
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    say("slurm.conf:\n    " + "\n    ".join(lines))
    return conf


def scontrol(env, *args):
    p = subprocess.run([which("scontrol"), *args], env=env, capture_output=True, text=True,
                       timeout=30)
    return p.stdout if p.returncode == 0 else ""


def field(text, key):
    for token in text.split():
        if token.startswith(key + "="):
            return token.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------------

def main():
    global top, client_env
    ensure_packages()
    if os.geteuid() != 0:
        skip("the Slurm test starts slurmctld and slurmd as root (SlurmUser=root) and munged as "
             "the munge user: it must run as root")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        skip("there is no munge user (the munge package creates it)")

    host = socket.gethostname().split(".")[0]
    top = tempfile.mkdtemp(prefix="moesim-slurm-")
    os.chmod(top, 0o755)  # munged, as the munge user, must reach top/munge
    mdir, sdir, submit = (os.path.join(top, d) for d in ("munge", "slurm", "submit"))
    for d in (mdir, sdir, submit):
        os.mkdir(d)
    say("working in %s; node %s" % (top, host))

    sock = bring_up_munge(mdir)
    conf = write_conf(sdir, host, sock)
    env = client_env = dict(os.environ, SLURM_CONF=conf)
    for k in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del env[k]
    ctld_log, slurmd_log = os.path.join(sdir, "slurmctld.log"), os.path.join(sdir, "slurmd.log")
    ctld = start("slurmctld", [which("slurmctld"), "-D", "-f", conf],
                 os.path.join(sdir, "slurmctld-console.log"), env=env)
    wait_for("answer from slurmctld", lambda: " is UP" in scontrol(env, "ping"), 30,
             [("slurmctld", ctld, ctld_log)])
    slurmd = start("slurmd", [which("slurmd"), "-D", "-f", conf, "-N", host],
                   os.path.join(sdir, "slurmd-console.log"), env=env)
    daemons = [("slurmctld", ctld, ctld_log), ("slurmd", slurmd, slurmd_log)]
    state = wait_for("idle node", lambda: (lambda s: s if s and s.startswith("IDLE") else None)(
        field(scontrol(env, "show", "node", host), "State")), NODE_TIMEOUT, daemons)
    say("node %s is %s" % (host, state))
    mpis = subprocess.run([which("srun"), "--mpi=list"], env=env, capture_output=True, text=True,
                          timeout=30)
    say("srun --mpi=list: %s" % " ".join((mpis.stdout + mpis.stderr).split()))

    # Two jobs with the script's defaults: submit directory with build/moesim
    os.makedirs(os.path.join(submit, "build"))
    binary = os.path.join(submit, "build", "moesim")
    os.symlink(moesim, binary)
    job_env = dict(env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OPENBLAS_NUM_THREADS="1")
    tiny = ["--tokens", "96", "--hidden", "8", "--experts", "4", "--iters", "1", "--warmup", "0"]
    jobs = {}
    for name, opts in (("srun", []), ("mpirun", ["--launcher", "mpirun", "--run-dir",
                                                 "runs/via-mpirun"])):
        cmd = [which("sbatch"), "--parsable", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
               "--time=5", "--job-name=moesim-" + name, script, *opts, "--", *tiny]
        p = subprocess.run(cmd, env=job_env, cwd=submit, capture_output=True, text=True,
                           timeout=60)
        if p.returncode != 0:
            fail_with("sbatch refused the script (exit %d): %s\n%s" % (
                p.returncode, shlex.join(cmd), p.stdout + p.stderr))
        job_id = p.stdout.strip().split(";")[0]
        run_dir = os.path.join(submit, *(["runs", "via-mpirun"] if opts else
                                         ["runs", "moesim-" + job_id]))
        jobs[name] = (job_id, run_dir)
        submitted.append(job_id)
        say("submitted job %s (%s): %s" % (job_id, name, shlex.join(cmd[1:])))

    for name, (job_id, run_dir) in jobs.items():
        info = wait_for("end of job %s" % job_id, lambda: (lambda t: t if field(
            t, "JobState") in ENDED else None)(scontrol(env, "show", "job", job_id)),
            JOB_TIMEOUT, daemons)
        state, code = field(info, "JobState"), field(info, "ExitCode")
        say("job %s (%s): %s, exit code %s" % (job_id, name, state, code))
        out = os.path.join(submit, "moesim-%s-%s.out" % (name, job_id))
        ok = c.check(state == "COMPLETED" and code == "0:0",
                     "job %s (%s) COMPLETED with exit code 0:0" % (job_id, name),
                     "%s\n--- job output %s\n%s\n--- slurmd log\n%s" % (
                         info.strip(), out, tail(out), tail(slurmd_log)))
        if not ok:
            say("job %s (%s) did not complete: its run directory is checked all the same"
                % (job_id, name))
        check_run_dir(name, job_id, run_dir, binary)
    if c.failed:
        dump_logs()


def check_run_dir(name, job_id, run_dir, binary):
    files = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
    if not c.check({"command.txt", "job.txt", "moesim.json", "report.txt"} <= set(files),
                   "%s: run directory %s holds command.txt, job.txt, moesim.json, report.txt"
                   % (name, run_dir), str(files)):
        return
    with open(os.path.join(run_dir, "moesim.json")) as f:
        doc = json.load(f)
    c.check(doc.get("config", {}).get("ranks") == 2, "%s: moesim.json config.ranks == 2" % name,
            str(doc.get("config")))
    c.check(isinstance(doc.get("drops"), dict), "%s: moesim.json has its drops section" % name)
    with open(os.path.join(run_dir, "command.txt")) as f:
        text = f.read()
    say("job %s ran: %s" % (job_id, text.strip()))
    cmd = shlex.split(text)
    if name == "srun":
        head_ok = cmd[:3] == ["srun", "--mpi=pmix", "--cpu-bind=cores"]
    else:
        head_ok = cmd[:1] == ["mpirun"] and "--allow-run-as-root" in cmd and \
            "--bind-to" in cmd and cmd[cmd.index("--bind-to") + 1:][:1] == ["core"]
    c.check(head_ok, "%s: command.txt starts with the %s line" % (name, name), str(cmd))
    c.check(binary in cmd and cmd[cmd.index(binary) + 1:cmd.index(binary) + 3] ==
            ["--json", os.path.join(run_dir, "moesim.json")],
            "%s: command.txt runs SUBMIT/build/moesim --json RUN_DIR/moesim.json" % name,
            str(cmd))
    with open(os.path.join(run_dir, "job.txt")) as f:
        job = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    c.check(job.get("job_id") == job_id and job.get("ntasks") == "2"
            and job.get("exit_status") == "0", "%s: job.txt job_id, ntasks=2, exit_status=0"
            % name, str(job))
    with open(os.path.join(run_dir, "report.txt")) as f:
        report = f.read()
    c.check("ranks 2" in report, "%s: report.txt is moesim's report for 2 ranks" % name,
            report[:400] + "\n--- stderr.txt\n" + tail(os.path.join(run_dir, "stderr.txt")))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        main()
    finally:
        stop_all()
    c.done("slurm")
