"""Outputs (--json, --dump-routing, --dump-output) never destroy what is not theirs, and are
published all together or not at all (docs/options.md, "Output files").

Every case runs in a fresh temporary directory; after every case, whatever its outcome, no file
whose name contains ".moesim-tmp" or ".tmp." may be left anywhere in it. Checked, at R = 1 and 2
(some at 3, where N = 100 does not divide):
  - `-` is standard output: `--json -` puts exactly the JSON document on stdout (json.loads of the
    whole of stdout; config.ranks = R) and the text report on stderr; `--dump-routing -` puts
    exactly the CSV on stdout, byte for byte what the same run writes to a file; `--dump-output -`
    with stdout a pipe puts valid .npy bytes there (np.load, shape (N, d), equal to the file); on a
    terminal (a pseudo-terminal as mpirun's stdout) `--dump-output -` is refused; two outputs both
    `-` are refused naming both options, and so are `--json /dev/stdout --dump-routing -` (the
    same file by device and inode: the rank's descriptor 1);
  - character devices, FIFOs and sockets are written in place: `--json /dev/null` (directly and
    through a symlink in the temp dir) exits 0 and /dev/null is still a character device;
    `--json /dev/full` (and /dev/full as the last output) exits 1 with one `moesim: error:` line
    saying "No space left", the other outputs beside it are not published, /dev/full is still a
    character device; a FIFO with a reader thread receives the whole JSON (and a whole .npy) and
    is still a FIFO; a listening Unix socket receives the JSON and is still a socket;
  - symlinks are followed: link.json -> sub/real.json writes real.json, the link stays a link
    with the same target; a dangling link (and a chain of two) creates its final target;
  - a regular file is replaced: new content, new inode (a rename, not an overwrite), the old
    permission bits (0640) kept;
  - caught mid-write (the second output a FIFO nobody reads yet, so rank 0 waits inside the final
    write): the JSON's temporary sits beside the symlink's target, named NAME.moesim-tmp.PID.XXXXXX,
    with the target's mode; nothing is published yet; once the FIFO is read all are published;
  - the replace protocol in rank 0's system calls (strace -f at R = 1; skipped with a note when
    strace is missing): each temporary O_CREAT|O_EXCL beside its target, fsync then close, every
    temporary fsync'ed before the first rename, and an fsync of the directory after each rename;
  - an output that is an input or another output is refused before anything runs (exit 2, one
    error line naming both options, nothing on stdout, the directory byte for byte as before):
    the same name, a hard link, a symlink, "./dir/../x.npy"; --json/--dump-output/--dump-routing
    against --tokens-file, --router-file, --logits-file, --network; --json against --dump-routing
    ("a.json" and "./a.json", existing or not, and through a dangling symlink);
  - fault injection (MOESIM_FAULT=site:rank) at R = 3 with all three outputs: every site, on rank 0,
    on the last rank and on every rank (where the site exists on that rank), ends within the
    timeout (a hang is the regression of "the two-level exchange can hang when one rank fails
    before a collective the others enter"), exits 2 (set_rows, hier_plan: at creation) or 1, prints
    one `moesim: error:` line naming the injected fault (or, for write_outputs, the write error of
    the last output), and publishes nothing. set_rows and hier_plan run with --a2a hierarchical
    --ranks-per-node 2 (set_rows also flat).
"""

import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time

import numpy as np

import moetest as mt

TIMEOUT = 20  # seconds for one run; each takes well under two
N, D, E = 100, 16, 4
SMALL = ["--tokens", N, "--hidden", D, "--experts", E, "--iters", 1, "--warmup", 0]
ERR = "moesim: error: "


# ---------------------------------------------------------------------------------------------
# Helpers

def temporaries(d):
    """Every path under d whose name carries a temporary marker."""
    out = []
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            if ".moesim-tmp" in name or ".tmp." in name:
                out.append(os.path.join(root, name))
    return out


def snapshot(d):
    """Everything under d: relative path -> (kind, content) where content is the bytes of a file,
    the target of a link; plus inode and mode bits, so that "unchanged" means byte for byte."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, d)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[rel] = ("file", fh.read(), st.st_ino, st.st_mode)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), None, st.st_ino, st.st_mode)
    return out


def run_bytes(exe, ranks, args, cwd=None, env_extra=None, timeout=TIMEOUT, stdout=None):
    """mpirun as mt.run does (own session, hang = TimeoutExpired after killing the session), but
    stdout is kept as bytes (binary .npy), or goes to the given file descriptor. Returns
    (returncode, stdout bytes, stderr text, seconds)."""
    cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), exe] + [str(a) for a in args]
    env = dict(os.environ)
    env.update(mt.MPI_ENV)
    env.update(env_extra or {})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if stdout is None else stdout,
                            stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in mt.session_members(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout)
    return proc.returncode, out or b"", err.decode(errors="replace"), time.monotonic() - t0


class Case:
    """One case: a fresh directory, runs in it, and the temporary check at the end."""

    def __init__(self, ck, root, name):
        self.ck, self.name = ck, name
        self.d = os.path.join(root, name)
        os.makedirs(self.d)

    def p(self, *names):
        return os.path.join(self.d, *names)

    def run(self, ranks, args, **kw):
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("cwd", self.d)
        return mt.run(self.exe, ranks, args, **kw)

    def no_temporaries(self):
        left = temporaries(self.d)
        self.ck.check(not left, "%s: no temporary left" % self.name, "\n".join(left))


def one_error_line(ck, tag, lines, detail, patterns=()):
    ok = ck.check(len(lines) == 1 and lines[0].startswith(ERR),
                  tag + ": exactly one 'moesim: error:' line", detail)
    if ok:
        for pat in patterns:
            ck.check(re.search(pat, lines[0], re.IGNORECASE),
                     tag + ": the message names /%s/" % pat, lines[0])
    return ok


def is_chr(path):
    return stat.S_ISCHR(os.stat(path).st_mode)


def fifo_reader(path, sink):
    """Thread body: open the FIFO for reading (blocks until a writer comes) and read to EOF."""
    try:
        with open(path, "rb") as fh:
            sink.append(fh.read())
    except OSError as e:
        sink.append(e)


def unblock_fifo(path):
    """If the reader thread is still blocked in open, open the FIFO for writing and close it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Standard output

def stdout_cases(ck, exe, root):
    for R in (1, 2, 3):
        c = Case(ck, root, "stdout_json_R%d" % R)
        r = c.run(R, SMALL + ["--json", "-"])
        tag = "--json - (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        try:
            doc = json.loads(r.stdout)
            ck.equal(doc["config"]["ranks"], R, tag + ": config.ranks")
            ck.equal(doc["config"]["tokens"], N, tag + ": config.tokens")
        except (ValueError, KeyError) as e:
            ck.check(False, tag + ": stdout is exactly one JSON document (%s)" % e, r.describe())
        ck.check("Drops and waste" in r.stderr and "Experts (load bar" in r.stderr,
                 tag + ": the text report went to stderr", r.describe())
        ck.check(not [l for l in r.own_stderr if l.startswith("moesim: error")],
                 tag + ": no error line", r.describe())
        c.no_temporaries()
        if R == 3:  # the rest at R = 1 and 2
            continue

        # --quiet: stdout the JSON, stderr empty
        r = c.run(R, SMALL + ["--json", "-", "--quiet"])
        ck.equal(r.returncode, 0, tag + " --quiet: exit 0")
        ck.check(r.stdout.lstrip().startswith("{") and json.loads(r.stdout)["config"]["ranks"] == R,
                 tag + " --quiet: stdout is the JSON", r.describe())
        ck.equal(r.own_stderr, [], tag + " --quiet: nothing on stderr")

        # --dump-routing -: exactly the CSV the same run writes to a file
        csv_file = c.p("r.csv")
        rf = c.run(R, SMALL + ["--quiet", "--dump-routing", csv_file])
        r = c.run(R, SMALL + ["--dump-routing", "-"])
        tag = "--dump-routing - (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        ck.equal(rf.returncode, 0, tag + ": the file twin runs")
        if os.path.exists(csv_file):
            with open(csv_file) as fh:
                want = fh.read()
            ck.check(r.stdout == want, tag + ": stdout is exactly the CSV (same bytes as the file)",
                     "stdout starts %r, file starts %r" % (r.stdout[:200], want[:200]))
            ck.equal(len(want.splitlines()), 1 + N * 2, tag + ": header + N k rows")
        ck.check("Drops and waste" in r.stderr, tag + ": the report went to stderr", r.describe())
        c.no_temporaries()

        # --dump-output - into a pipe: .npy bytes
        y_file = c.p("y.npy")
        rf = c.run(R, SMALL + ["--quiet", "--dump-output", y_file])
        rc, out, err, _ = run_bytes(exe, R, SMALL + ["--dump-output", "-"], cwd=c.d)
        tag = "--dump-output - (R=%d)" % R
        ck.equal(rc, 0, tag + ": exit 0")
        try:
            y = np.load(io.BytesIO(out))
            ck.equal(y.shape, (N, D), tag + ": np.load of stdout gives (N, d)")
            ck.equal(y.dtype, np.float32, tag + ": float32")
            if os.path.exists(y_file):
                ck.check(out == open(y_file, "rb").read(),
                         tag + ": stdout holds the same bytes as the file")
        except Exception as e:  # not a .npy: say what came out
            ck.check(False, tag + ": stdout is a .npy (%s)" % e, repr(out[:200]) + "\n" + err)
        ck.check("Drops and waste" in err, tag + ": the report went to stderr", err[-2000:])
        c.no_temporaries()

    # two outputs on stdout
    for R in (1, 2):
        for a, b in (("--json", "--dump-routing"), ("--json", "--dump-output"),
                     ("--dump-routing", "--dump-output")):
            c = Case(ck, root, "stdout_twice_%s_%s_R%d" % (a[2:], b[2:], R))
            r = c.run(R, SMALL + [a, "-", b, "-"])
            tag = "%s - %s - (R=%d)" % (a, b, R)
            ck.equal(r.returncode, 2, tag + ": refused, exit 2")
            one_error_line(ck, tag, r.own_stderr, r.describe(),
                           [re.escape(a) + r"\b", re.escape(b) + r"\b"])
            ck.equal(r.stdout, "", tag + ": nothing on stdout")
            c.no_temporaries()

    # '-' and /dev/stdout are the same file (the rank's descriptor 1): refused like two '-'
    for R in (1, 2):
        c = Case(ck, root, "stdout_devstdout_R%d" % R)
        r = c.run(R, SMALL + ["--quiet", "--json", "/dev/stdout", "--dump-routing", "-"])
        tag = "--json /dev/stdout --dump-routing - (R=%d)" % R
        if ck.check(r.returncode == 2, tag + ": refused as the same file, exit 2",
                    "exit %s; stdout: %d bytes, %s" % (
                        r.returncode, len(r.stdout),
                        "the JSON then the CSV" if "token,choice" in r.stdout else "")):
            one_error_line(ck, tag, r.own_stderr, r.describe(), [r"--json\b", r"--dump-routing\b"])
        c.no_temporaries()

    # .npy to a terminal: mpirun's stdout a pseudo-terminal (MOESIM_NO_TTY unset)
    import pty
    for R in (1, 2):
        c = Case(ck, root, "stdout_tty_R%d" % R)
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items()}
        env.update(mt.MPI_ENV)
        env.pop("MOESIM_NO_TTY", None)
        cmd = ["mpirun", "--oversubscribe", "-n", str(R), exe] + [str(a) for a in SMALL] + \
              ["--quiet", "--dump-output", "-"]
        proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, env=env, cwd=c.d,
                                start_new_session=True)
        os.close(slave)
        got = []

        def drain():
            while True:
                try:
                    b = os.read(master, 65536)
                except OSError:
                    break
                if not b:
                    break
                got.append(b)
        t = threading.Thread(target=drain, daemon=True)
        t.start()
        tag = "--dump-output - on a terminal (R=%d)" % R
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in mt.session_members(proc.pid) + [proc.pid]:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            proc.communicate()
            ck.check(False, tag + ": ends (it hung)")
            os.close(master)
            continue
        t.join(2)
        os.close(master)
        lines = mt.own_stderr_lines(err.decode(errors="replace"))
        ck.equal(proc.returncode, 2, tag + ": refused, exit 2")
        one_error_line(ck, tag, lines, err.decode(errors="replace"),
                       [r"--dump-output", r"terminal"])
        ck.check(b"NUMPY" not in b"".join(got), tag + ": no .npy bytes reached the terminal")
        c.no_temporaries()


# ---------------------------------------------------------------------------------------------
# Devices, FIFOs, sockets

def device_cases(ck, exe, root):
    for R in (1, 2):
        c = Case(ck, root, "devnull_R%d" % R)
        r = c.run(R, SMALL + ["--quiet", "--json", "/dev/null"])
        tag = "--json /dev/null (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        ck.check(is_chr("/dev/null"), tag + ": /dev/null is still a character device")
        c.no_temporaries()
        ck.equal(os.listdir(c.d), [], tag + ": nothing written in the temp dir")

        link = c.p("null.json")
        os.symlink("/dev/null", link)
        r = c.run(R, SMALL + ["--quiet", "--json", link, "--dump-output", c.p("y.npy")])
        tag = "--json symlink->/dev/null (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0", )
        ck.check(is_chr("/dev/null"), tag + ": /dev/null is still a character device")
        ck.check(os.path.islink(link) and os.readlink(link) == "/dev/null",
                 tag + ": the link is still a link to /dev/null")
        ck.check(os.path.exists(c.p("y.npy")), tag + ": the other output was published")
        c.no_temporaries()

        # /dev/full first, last, and alone
        for opt, others in (("--json", [("--dump-output", "x.npy")]),
                            ("--json", [("--dump-output", "x.npy"), ("--dump-routing", "r.csv")]),
                            ("--dump-output", [("--json", "a.json"), ("--dump-routing", "r.csv")]),
                            ("--dump-routing", [("--json", "a.json")]),
                            ("--json", [])):
            c = Case(ck, root, "devfull_%s_%d_R%d" % (opt[2:], len(others), R))
            args = SMALL + ["--quiet", opt, "/dev/full"]
            for o, f in others:
                args += [o, c.p(f)]
            r = c.run(R, args)
            tag = "%s /dev/full with %s (R=%d)" % (opt, [o for o, _ in others], R)
            ck.equal(r.returncode, 1, tag + ": exit 1")
            one_error_line(ck, tag, r.own_stderr, r.describe(),
                           [r"No space left", re.escape(opt)])
            ck.check(is_chr("/dev/full"), tag + ": /dev/full is still a character device")
            ck.equal(sorted(os.listdir(c.d)), [], tag + ": no other output published (all or none)")
            c.no_temporaries()

        # a FIFO with a reader: --json and --dump-output
        c = Case(ck, root, "fifo_R%d" % R)
        fj, fy = c.p("j.fifo"), c.p("y.fifo")
        os.mkfifo(fj)
        os.mkfifo(fy)
        sj, sy = [], []
        threads = [threading.Thread(target=fifo_reader, args=(fj, sj), daemon=True),
                   threading.Thread(target=fifo_reader, args=(fy, sy), daemon=True)]
        for t in threads:
            t.start()
        tag = "--json FIFO --dump-output FIFO (R=%d)" % R
        try:
            r = c.run(R, SMALL + ["--quiet", "--json", fj, "--dump-output", fy])
            ck.equal(r.returncode, 0, tag + ": exit 0")
        except subprocess.TimeoutExpired:
            ck.check(False, tag + ": ends (it hung)")
        for f, t in ((fj, threads[0]), (fy, threads[1])):
            t.join(5)
            if t.is_alive():
                unblock_fifo(f)
                t.join(5)
        try:
            doc = json.loads(sj[0].decode())
            ck.equal(doc["config"]["ranks"], R, tag + ": the reader got the whole JSON")
        except Exception as e:
            ck.check(False, tag + ": the reader got the whole JSON (%s)" % e, repr(sj)[:300])
        try:
            y = np.load(io.BytesIO(sy[0]))
            ck.equal(y.shape, (N, D), tag + ": the reader got the whole .npy")
        except Exception as e:
            ck.check(False, tag + ": the reader got the whole .npy (%s)" % e, repr(sy)[:300])
        for f in (fj, fy):
            ck.check(stat.S_ISFIFO(os.lstat(f).st_mode), tag + ": %s is still a FIFO" %
                     os.path.basename(f))
        ck.equal(sorted(os.listdir(c.d)), ["j.fifo", "y.fifo"], tag + ": nothing else written")
        c.no_temporaries()

        # a Unix socket with a listener
        c = Case(ck, root, "socket_R%d" % R)
        sp = c.p("j.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(sp)
        srv.listen(1)
        srv.settimeout(TIMEOUT)
        got = []

        def accept():
            try:
                conn, _ = srv.accept()
                conn.settimeout(TIMEOUT)
                buf = b""
                while True:
                    b = conn.recv(65536)
                    if not b:
                        break
                    buf += b
                conn.close()
                got.append(buf)
            except OSError as e:
                got.append(e)
        t = threading.Thread(target=accept, daemon=True)
        t.start()
        tag = "--json socket (R=%d)" % R
        r = c.run(R, SMALL + ["--quiet", "--json", sp])
        ck.equal(r.returncode, 0, tag + ": exit 0")
        t.join(5)
        srv.close()
        try:
            ck.equal(json.loads(got[0].decode())["config"]["ranks"], R,
                     tag + ": the listener got the whole JSON")
        except Exception as e:
            ck.check(False, tag + ": the listener got the whole JSON (%s)" % e, repr(got)[:300])
        ck.check(stat.S_ISSOCK(os.lstat(sp).st_mode), tag + ": still a socket")
        c.no_temporaries()


# ---------------------------------------------------------------------------------------------
# Links and regular files

def file_cases(ck, exe, root):
    for R in (1, 2):
        c = Case(ck, root, "symlink_R%d" % R)
        os.makedirs(c.p("sub"))
        real = c.p("sub", "real.json")
        mt.write(real, b"old\n")
        link = c.p("link.json")
        os.symlink("sub/real.json", link)  # relative: to the link's directory, not the cwd
        r = c.run(R, SMALL + ["--quiet", "--json", link], cwd=root)
        tag = "--json link -> sub/real.json (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        ck.check(os.path.islink(link) and os.readlink(link) == "sub/real.json",
                 tag + ": the link is still the same link")
        try:
            ck.equal(json.load(open(real))["config"]["ranks"], R, tag + ": real.json got the JSON")
        except ValueError as e:
            ck.check(False, tag + ": real.json got the JSON (%s)" % e)
        ck.equal(sorted(os.listdir(c.d)), ["link.json", "sub"], tag + ": nothing beside the link")
        c.no_temporaries()

        c = Case(ck, root, "dangling_R%d" % R)
        os.symlink("made.json", c.p("dang.json"))
        os.symlink("hop2.npy", c.p("hop1.npy"))
        os.symlink("final.npy", c.p("hop2.npy"))
        r = c.run(R, SMALL + ["--quiet", "--json", c.p("dang.json"), "--dump-output",
                              c.p("hop1.npy")])
        tag = "dangling links (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        ck.check(os.path.isfile(c.p("made.json")) and
                 json.load(open(c.p("made.json")))["config"]["ranks"] == R,
                 tag + ": the link's target was created with the JSON")
        ck.check(os.path.isfile(c.p("final.npy")) and np.load(c.p("final.npy")).shape == (N, D),
                 tag + ": the end of a chain of two links was created with the .npy")
        ck.check(all(os.path.islink(c.p(n)) for n in ("dang.json", "hop1.npy", "hop2.npy")),
                 tag + ": the links are still links")
        c.no_temporaries()

        c = Case(ck, root, "replace_R%d" % R)
        paths = {"--json": c.p("a.json"), "--dump-routing": c.p("r.csv"),
                 "--dump-output": c.p("y.npy")}
        before = {}
        for opt, p in paths.items():
            mt.write(p, b"old content\n")
            os.chmod(p, 0o640)
            before[opt] = os.stat(p).st_ino
        args = SMALL + ["--quiet"]
        for opt, p in paths.items():
            args += [opt, p]
        r = c.run(R, args)
        tag = "existing regular files (R=%d)" % R
        ck.equal(r.returncode, 0, tag + ": exit 0")
        for opt, p in paths.items():
            st = os.stat(p)
            ck.check(open(p, "rb").read() != b"old content\n", tag + ": %s content replaced" % opt)
            ck.check(st.st_ino != before[opt], tag + ": %s has a new inode (renamed over)" % opt)
            ck.equal(oct(stat.S_IMODE(st.st_mode)), oct(0o640), tag + ": %s keeps mode 0640" % opt)
        ck.equal(json.load(open(paths["--json"]))["config"]["ranks"], R, tag + ": the JSON is new")
        ck.equal(np.load(paths["--dump-output"]).shape, (N, D), tag + ": the .npy is new")
        c.no_temporaries()


def in_flight_cases(ck, exe, root):
    """Catch the outputs mid-write: --dump-routing is a FIFO nobody reads yet, so rank 0 stops in
    the middle of write_outputs with the JSON written to its temporary. The temporary must sit
    beside the symlink's target (sub/real.json.moesim-tmp.PID.XXXXXX), carry the target's mode,
    and nothing may be published yet (real.json still old, y.npy absent); once the FIFO is read,
    everything is published and the temporary is gone."""
    for R in (1, 2):
        c = Case(ck, root, "in_flight_R%d" % R)
        tag = "mid-write (R=%d)" % R
        os.makedirs(c.p("sub"))
        real = c.p("sub", "real.json")
        mt.write(real, b"old\n")
        os.chmod(real, 0o640)
        os.symlink("sub/real.json", c.p("link.json"))
        fifo = c.p("r.fifo")
        os.mkfifo(fifo)
        env = dict(os.environ)
        env.update(mt.MPI_ENV)
        cmd = ["mpirun", "--oversubscribe", "-n", str(R), exe] + [str(a) for a in SMALL] + [
            "--quiet", "--json", c.p("link.json"), "--dump-routing", fifo, "--dump-output",
            c.p("y.npy")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        temps = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None and not temps:
            temps = temporaries(c.d)
            time.sleep(0.05)
        time.sleep(0.2)
        temps = temporaries(c.d)
        if ck.check(len(temps) == 1, tag + ": one temporary while rank 0 waits for the FIFO",
                    "%s; exit %s" % (temps, proc.poll())):
            t = temps[0]
            ck.check(os.path.dirname(t) == c.p("sub") and
                     re.fullmatch(r"real\.json\.moesim-tmp\.\d+\.\w{6}", os.path.basename(t)),
                     tag + ": the temporary is beside the link's target, NAME.moesim-tmp.PID.XXXXXX",
                     t)
            ck.equal(oct(stat.S_IMODE(os.stat(t).st_mode)), oct(0o640),
                     tag + ": the temporary has the target's mode")
        ck.equal(open(real, "rb").read(), b"old\n", tag + ": real.json not replaced yet")
        ck.check(not os.path.exists(c.p("y.npy")), tag + ": y.npy not published yet")
        got = []
        th = threading.Thread(target=fifo_reader, args=(fifo, got), daemon=True)
        th.start()
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for pid in mt.session_members(proc.pid) + [proc.pid]:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            proc.communicate()
            ck.check(False, tag + ": ends once the FIFO is read (it hung)")
            unblock_fifo(fifo)
            continue
        th.join(5)
        ck.equal(proc.returncode, 0, tag + ": exit 0")
        try:
            ck.equal(json.load(open(real))["config"]["ranks"], R, tag + ": real.json published")
        except ValueError as e:
            ck.check(False, tag + ": real.json published (%s)" % e)
        ck.check(os.path.islink(c.p("link.json")), tag + ": link.json is still a link")
        ck.check(got and isinstance(got[0], bytes) and
                 got[0].startswith(b"token,choice,expert,gate,accepted,score,rerouted\n") and
                 len(got[0].splitlines()) == 1 + 2 * N, tag + ": the FIFO got the whole CSV")
        ck.check(os.path.exists(c.p("y.npy")) and np.load(c.p("y.npy")).shape == (N, D),
                 tag + ": y.npy published")
        c.no_temporaries()


def strace_calls(log):
    """[(pid, name, args text, result text)] from an `strace -f` log, in order, with
    "<unfinished ...>" / "<... resumed>" pairs joined."""
    calls, pending = [], {}
    for line in log.splitlines():
        m = re.match(r"(\d+)\s+(.*)$", line)
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[:-len("<unfinished ...>")]
            continue
        r = re.match(r"<\.\.\. \w+ resumed>(.*)$", rest)
        if r:
            rest = pending.pop(pid, "") + r.group(1)
        c = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\d+)", rest)
        if c:
            calls.append((pid, c.group(1), c.group(2), int(c.group(3))))
    return calls


def durability_cases(ck, exe, root):
    """The replace protocol seen in the system calls of rank 0 (strace -f, R = 1): for each output,
    its temporary is created beside the final target (O_CREAT|O_EXCL), fsync'ed and closed; only
    when every temporary has been fsync'ed does the first rename happen (all or nothing); each
    rename is followed by an fsync of an O_DIRECTORY descriptor of the target's directory."""
    strace = shutil.which("strace")
    if strace is None:
        print("SKIP (durability): strace is not installed; the fsync/rename order is not checked")
        return
    c = Case(ck, root, "durability")
    os.makedirs(c.p("sub"))
    mt.write(c.p("sub", "real.json"), b"old\n")
    os.symlink("sub/real.json", c.p("link.json"))
    log = c.p("..", "durability.strace")
    env = dict(os.environ)
    env.update(mt.MPI_ENV)
    cmd = [strace, "-f", "-qq", "-o", log, "-e",
           "trace=openat,open,fsync,fdatasync,rename,renameat,renameat2,close",
           "mpirun", "--oversubscribe", "-n", "1", exe] + [str(a) for a in SMALL] + [
        "--quiet", "--json", c.p("link.json"), "--dump-routing", c.p("r.csv"), "--dump-output",
        c.p("y.npy")]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                       timeout=TIMEOUT * 3)
    if p.returncode != 0 and "ptrace" in p.stderr:
        print("SKIP (durability): strace cannot trace here: %s" % p.stderr.strip()[-200:])
        return
    tag = "fsync/rename protocol (strace, R=1)"
    ck.equal(p.returncode, 0, tag + ": exit 0")
    calls = strace_calls(open(log).read())
    os.unlink(log)
    targets = [c.p("sub", "real.json"), c.p("r.csv"), c.p("y.npy")]
    renames = {}
    for i, (pid, name, args, ret) in enumerate(calls):
        if name in ("rename", "renameat", "renameat2") and ret == 0:
            paths = re.findall(r'"([^"]*)"', args)
            if len(paths) == 2:
                renames[paths[1]] = (i, pid, paths[0])
    first_rename = min([v[0] for v in renames.values()] or [None])
    for t in targets:
        what = "%s: %s" % (tag, os.path.relpath(t, c.d))
        if not ck.check(t in renames, what + ": published by a rename", str(sorted(renames))):
            continue
        ri, pid, tmp = renames[t]
        ck.check(os.path.dirname(tmp) == os.path.dirname(t) and
                 os.path.basename(tmp).startswith(os.path.basename(t) + ".moesim-tmp."),
                 what + ": the temporary is beside the target", tmp)
        mine = [(i, n, a, r) for i, (q, n, a, r) in enumerate(calls) if q == pid]
        opens = [(i, r) for i, n, a, r in mine if n in ("open", "openat") and '"%s"' % tmp in a
                 and "O_CREAT" in a and "O_EXCL" in a and r >= 0]
        if not ck.check(opens, what + ": the temporary is created with O_CREAT|O_EXCL"):
            continue
        oi, fd = opens[-1]
        fsyncs = [i for i, n, a, r in mine if n in ("fsync", "fdatasync") and a == str(fd)
                  and oi < i < ri and r == 0]
        closes = [i for i, n, a, r in mine if n == "close" and a == str(fd) and oi < i < ri]
        ck.check(fsyncs and closes and fsyncs[0] < closes[0],
                 what + ": the temporary is fsync'ed, then closed, before the rename")
        ck.check(fsyncs and fsyncs[0] < first_rename,
                 what + ": its fsync comes before the first rename of any output (all or none)")
        dirfds = [(i, r) for i, n, a, r in mine if n in ("open", "openat") and i > ri and r >= 0
                  and '"%s"' % os.path.dirname(t) in a and "O_DIRECTORY" in a]
        ok = False
        if dirfds:
            di, dfd = dirfds[0]
            ok = any(n == "fsync" and a == str(dfd) and i > di and r == 0 for i, n, a, r in mine)
        ck.check(ok, what + ": the directory is fsync'ed after the rename")
    c.no_temporaries()


# ---------------------------------------------------------------------------------------------
# Outputs that are inputs or other outputs

def collision_cases(ck, exe, root):
    rng = np.random.default_rng(3)
    for R in (1, 2, 3):
        def setup(c):
            np.save(c.p("x.npy"), rng.standard_normal((N, D)).astype(np.float32))
            np.save(c.p("w.npy"), rng.standard_normal((E, D)).astype(np.float32))
            np.save(c.p("z.npy"), rng.standard_normal((N, E)).astype(np.float32))
            mt.write_network(c.p("net.txt"), "t", {"same_node": (1.0, 10.0),
                                                    "other_node": (2.0, 5.0)})
            os.makedirs(c.p("dir"))
            os.link(c.p("x.npy"), c.p("hard.npy"))
            os.symlink("x.npy", c.p("soft.npy"))
            os.symlink("new.json", c.p("dangling.json"))
            mt.write(c.p("exist.json"), b"{}\n")

        # (name, args with @file for c.p(file) and bare names resolved by cwd = case dir,
        #  the two option names the message must hold)
        cases = [
            ("json_is_tokens", ["--json", "x.npy", "--tokens-file", "x.npy"],
             ("--json", "--tokens-file")),
            ("json_hardlink_tokens", ["--json", "hard.npy", "--tokens-file", "x.npy"],
             ("--json", "--tokens-file")),
            ("json_symlink_tokens", ["--json", "soft.npy", "--tokens-file", "x.npy"],
             ("--json", "--tokens-file")),
            ("json_dotdot_tokens", ["--json", "./dir/../x.npy", "--tokens-file", "x.npy"],
             ("--json", "--tokens-file")),
            ("json_abs_tokens_rel", ["--json", "@x.npy", "--tokens-file", "x.npy"],
             ("--json", "--tokens-file")),
            ("output_is_router", ["--dump-output", "w.npy", "--router-file", "w.npy",
                                  "--tokens", N, "--hidden", D, "--experts", E],
             ("--dump-output", "--router-file")),
            ("output_is_logits", ["--dump-output", "z.npy", "--logits-file", "z.npy",
                                  "--tokens", N, "--hidden", D],
             ("--dump-output", "--logits-file")),
            ("routing_is_logits", ["--dump-routing", "./dir/../z.npy", "--logits-file", "z.npy",
                                   "--tokens", N, "--hidden", D],
             ("--dump-routing", "--logits-file")),
            ("routing_is_tokens_hard", ["--dump-routing", "hard.npy", "--tokens-file", "x.npy"],
             ("--dump-routing", "--tokens-file")),
            ("json_is_network", ["--json", "net.txt", "--network", "net.txt"] + SMALL,
             ("--json", "--network")),
            ("json_routing_new", ["--json", "a.json", "--dump-routing", "./a.json"] + SMALL,
             ("--json", "--dump-routing")),
            ("json_routing_exist", ["--json", "exist.json", "--dump-routing",
                                    "dir/../exist.json"] + SMALL,
             ("--json", "--dump-routing")),
            ("json_routing_dangling", ["--json", "new.json", "--dump-routing",
                                       "dangling.json"] + SMALL,
             ("--json", "--dump-routing")),
            ("json_output_abs_rel", ["--json", "@b.npy", "--dump-output", "b.npy"] + SMALL,
             ("--json", "--dump-output")),
        ]
        if R == 2:
            cases = [x for x in cases if x[0] in ("json_is_tokens", "json_hardlink_tokens",
                                                  "output_is_logits", "json_routing_dangling",
                                                  "json_symlink_tokens")]
        elif R == 3:
            cases = [x for x in cases if x[0] in ("json_hardlink_tokens", "json_routing_dangling")]
        for name, args, opts in cases:
            c = Case(ck, root, "%s_R%d" % (name, R))
            setup(c)
            before = snapshot(c.d)
            argv = [c.p(a[1:]) if isinstance(a, str) and a.startswith("@") else a for a in args]
            if "--iters" not in argv:
                argv += ["--iters", 1, "--warmup", 0]
            tag = "%s (R=%d)" % (name, R)
            try:
                r = c.run(R, argv)
            except subprocess.TimeoutExpired:
                ck.check(False, tag + ": ends (it hung)")
                continue
            ck.equal(r.returncode, 2, tag + ": refused, exit 2")
            one_error_line(ck, tag, r.own_stderr, r.describe(),
                           [re.escape(o) + r"(?![-\w])" for o in opts])
            ck.equal(r.stdout, "", tag + ": nothing on stdout")
            after = snapshot(c.d)
            changed = sorted(set(before) ^ set(after)) + sorted(
                k for k in before if k in after and before[k] != after[k])
            ck.check(not changed, tag + ": the directory is unchanged, byte for byte",
                     "changed: %s" % changed)
            if ck.failures and ck.failures[-1].startswith(tag):
                print("   ", " ".join(r.cmd))
            else:
                print("%-26s R=%d  %.2f s  %s" % (name, R, r.elapsed,
                                                  r.own_stderr[0] if r.own_stderr else ""))
            c.no_temporaries()

    # the control: the same inputs with distinct outputs run
    c = Case(ck, root, "collision_control")
    np.save(c.p("x.npy"), rng.standard_normal((N, D)).astype(np.float32))
    r = c.run(2, ["--tokens-file", "x.npy", "--experts", E, "--iters", 1, "--warmup", 0, "--quiet",
                  "--json", "x.json", "--dump-routing", "x.csv", "--dump-output", "y.npy"])
    ck.equal(r.returncode, 0, "collision control: distinct outputs run")
    ck.equal(sorted(os.listdir(c.d)), ["x.csv", "x.json", "x.npy", "y.npy"],
             "collision control: the three outputs published")
    c.no_temporaries()


# ---------------------------------------------------------------------------------------------
# Fault injection

FAULTS = [
    # site, extra arguments, ranks to inject on, expected exit, pattern
    ("set_rows", ["--a2a", "hierarchical", "--ranks-per-node", 2], ("0", "2", "-1"), 2,
     r"injected fault \(MOESIM_FAULT=set_rows\)"),
    ("set_rows", [], ("2", "-1"), 2, r"injected fault \(MOESIM_FAULT=set_rows\)"),
    ("hier_plan", ["--a2a", "hierarchical", "--ranks-per-node", 2], ("0", "1", "2", "-1"), 2,
     r"injected fault \(MOESIM_FAULT=hier_plan\)"),
    # locality and write_outputs run on rank 0 alone
    ("locality", [], ("0", "-1"), 1, r"injected fault \(MOESIM_FAULT=locality\)"),
    ("locality", ["--a2a", "hierarchical", "--ranks-per-node", 2], ("0",), 1,
     r"injected fault \(MOESIM_FAULT=locality\)"),
    ("gather_dumps", [], ("0", "2", "-1"), 1, r"injected fault \(MOESIM_FAULT=gather_dumps\)"),
    ("gather_dumps", ["--a2a", "hierarchical", "--ranks-per-node", 2], ("2",), 1,
     r"injected fault \(MOESIM_FAULT=gather_dumps\)"),
    ("write_outputs", [], ("0", "-1"), 1, r"cannot write --dump-output .*Input/output error"),
]


def fault_cases(ck, exe, root):
    R = 3
    for site, extra, ranks, status, pattern in FAULTS:
        for rank in ranks:
            name = "fault_%s_%s%s" % (site, rank, "_hier" if extra else "")
            c = Case(ck, root, name)
            tag = "MOESIM_FAULT=%s:%s%s (R=%d)" % (site, rank, " hierarchical" if extra else "", R)
            args = SMALL + extra + ["--quiet", "--json", "a.json", "--dump-routing", "r.csv",
                                    "--dump-output", "y.npy"]
            try:
                rc, out, err, secs = run_bytes(exe, R, args, cwd=c.d,
                                               env_extra={"MOESIM_FAULT": "%s:%s" % (site, rank)})
            except subprocess.TimeoutExpired:
                ck.check(False, tag + ": ends within %d s (it hung)" % TIMEOUT)
                c.no_temporaries()
                continue
            ck.equal(rc, status, tag + ": exit %d" % status)
            lines = mt.own_stderr_lines(err)
            if one_error_line(ck, tag, lines, err, [pattern]):
                print("%-30s %.2f s  %s" % (tag, secs, lines[0]))
            if rank not in ("0", "-1") and site not in ("locality", "write_outputs"):
                ck.check(re.search(r"\brank %s\b" % rank, lines[0] if lines else ""),
                         tag + ": the message says which rank failed", err)
            ck.equal(sorted(os.listdir(c.d)), [], tag + ": no output published")
            c.no_temporaries()

    # write_outputs with fewer outputs: the last one fails, nothing is published
    for outs, failing in (([("--json", "a.json"), ("--dump-routing", "r.csv")], "--dump-routing"),
                          ([("--json", "a.json")], "--json"),
                          ([("--json", "a.json"), ("--dump-output", "y.npy")], "--dump-output")):
        c = Case(ck, root, "fault_write_outputs_%d_%s" % (len(outs), failing[2:]))
        args = SMALL + ["--quiet"]
        for o, f in outs:
            args += [o, f]
        tag = "MOESIM_FAULT=write_outputs:0 with %s (R=2)" % [o for o, _ in outs]
        rc, out, err, secs = run_bytes(exe, 2, args, cwd=c.d,
                                       env_extra={"MOESIM_FAULT": "write_outputs:0"})
        ck.equal(rc, 1, tag + ": exit 1")
        one_error_line(ck, tag, mt.own_stderr_lines(err), err,
                       [re.escape(failing) + r"\b", r"Input/output error"])
        ck.equal(sorted(os.listdir(c.d)), [], tag + ": no output published")
        c.no_temporaries()

    # the control: no fault, the same arguments publish all three
    for extra in ([], ["--a2a", "hierarchical", "--ranks-per-node", 2]):
        c = Case(ck, root, "fault_control%s" % ("_hier" if extra else ""))
        r = c.run(R, SMALL + extra + ["--quiet", "--json", "a.json", "--dump-routing", "r.csv",
                                      "--dump-output", "y.npy"])
        ck.equal(r.returncode, 0, "fault control %s: exit 0" % extra)
        ck.equal(sorted(os.listdir(c.d)), ["a.json", "r.csv", "y.npy"],
                 "fault control %s: all three published" % extra)


def main():
    exe = mt.moesim_path()
    Case.exe = exe
    ck = mt.Checker("test_outputs")
    root = mt.workdir()
    t0 = time.monotonic()
    for part in (stdout_cases, device_cases, file_cases, in_flight_cases, durability_cases,
                 collision_cases, fault_cases):
        t = time.monotonic()
        ck.guard(part.__name__, part, ck, exe, root)
        print("-- %s: %.1f s" % (part.__name__, time.monotonic() - t), flush=True)
    left = temporaries(root)
    ck.check(not left, "no temporary anywhere under the work directory", "\n".join(left))
    print("total %.1f s" % (time.monotonic() - t0))
    ck.finish()


if __name__ == "__main__":
    main()
