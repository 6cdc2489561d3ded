"""Shared helpers of the MPI end-to-end tests: running moesim under mpirun, reading what it writes,
and a plain serial reference of one MoE layer written from the documented formulas (not from the C).

Every test script is run as `/usr/bin/python3 test_x.py MOESIM` and exits 0 (pass), 1 (fail) or
77 (skipped, reason printed).

Reference conventions (see include/moesim/rng.h and docs/):
  h[g][j]  = normal(seed, 1, g*d + j)                        (N, d) float32
  W[e][j]  = normal(seed, 2, e*d + j) / sqrt(d)              (E, d) float32
  W1_e     = normal(seed, 0x100 + 2e, i) / sqrt(d)           (f, d) float32, i row-major
  W2_e     = normal(seed, 0x101 + 2e, i) / sqrt(f)           (d, f) float32
  p = softmax(h W^T); top-k by p, ties to the lower id; C = ceil(cf * G * k / E) per group;
  position policy; y = h + sum over served assignments of gate * GELU(h W1^T) W2^T.
  Router options (issue 9; defaults reproduce the line above exactly): --score sigmoid gives
  s = sigmoid(z) in place of p, the k chosen s always normalized to sum 1; a selection bias b
  (--expert-bias-file) chooses the top-k by p + b (or s + b) but never enters the gate;
  --topk-scale S multiplies every gate after normalization; --min-capacity M makes
  C = max(ceil(cf G k / E), M). capacity_needed() is the cf a dropless run reports.
  Policies and routers (issue 9, Reference's keyword options; docs/model.md): --drop-policy
  position | probs (key -gate) | choice (key c) | random (key uniform(seed, 7, t k + c)) serve, per
  expert and group, the C assignments first in (key, token, choice) order; reroute moves what
  position drops to the token's next-best expert with room, in rounds (reroute()). Expert choice:
  each expert takes its C = min(capacity, G) best tokens per group by p + b, gate p * scale.
  Group-limited top-k (grouped_topk), noisy top-k (z += eps softplus(h W_noise^T), streams 4 and
  5), input jitter (stream 6, routing only) and shared experts (expert ids 65536 + s, gate 1).
"""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction

try:
    import numpy as np
except ImportError:  # the Debian interpreter has python3-numpy; another one may not
    print("SKIP: numpy is not importable by %s" % sys.executable)
    sys.exit(77)

TIMEOUT = 60  # seconds for one mpirun; every run here takes well under one
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl": "self,vader", "MOESIM_NO_TTY": "1", "OPENBLAS_NUM_THREADS": "1",
           # when a rank exits non-zero, mpirun waits 1 s before SIGKILLing the others (about 2 s
           # in all); every refusal test pays that, so make it immediate
           "OMPI_MCA_odls_base_sigkill_timeout": "0"}


def _session_base():
    """A session-directory root of this test's own for Open MPI: meson runs tests in parallel, and
    Open MPI 4.1's mpirun fails ("A call to mkdir was unable to create the desired directory:
    /tmp/ompi.<host>.<uid> ... File exists") when two of them create the shared per-user one at
    the same moment. Short (under /tmp, PMIx puts sockets there), removed at exit."""
    import atexit
    base = tempfile.mkdtemp(prefix="moesim-ompi-")
    atexit.register(shutil.rmtree, base, True)
    return base


MPI_ENV["OMPI_MCA_orte_tmpdir_base"] = _session_base()


# ---------------------------------------------------------------------------------------------
# Running moesim

def sanitized():
    """True under the sanitizer build of the CI (launch/bootstrap.sh sets MOESIM_TEST_SANITIZED=1),
    where one run costs 10 to 20 times more: the tests of hundreds of runs then take a subset of
    their rank counts, never fewer than two, so rank-count invariance is still checked."""
    return os.environ.get("MOESIM_TEST_SANITIZED") == "1"


def moesim_path():
    if len(sys.argv) < 2:
        print("usage: %s MOESIM" % sys.argv[0], file=sys.stderr)
        sys.exit(2)
    exe = os.path.abspath(sys.argv[1])
    if not os.access(exe, os.X_OK):
        print("FAIL: moesim executable not found at %s" % exe)
        sys.exit(1)
    if shutil.which("mpirun") is None:
        print("SKIP: mpirun is not on PATH")
        sys.exit(77)
    return exe


class Run:
    """Outcome of one mpirun: returncode, stdout, stderr, and the moesim lines of stderr."""

    def __init__(self, cmd, proc, elapsed):
        self.cmd, self.returncode, self.elapsed = cmd, proc.returncode, elapsed
        self.stdout, self.stderr = proc.stdout, proc.stderr
        self.own_stderr = own_stderr_lines(proc.stderr)

    def describe(self):
        return "command: %s\nexit %s after %.1f s\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(self.cmd), self.returncode, self.elapsed, self.stdout[-3000:],
            self.stderr[-3000:])


def own_stderr_lines(text):
    """stderr without Open MPI's own framed notices (blocks between lines of dashes that mpirun
    adds when a rank exits non-zero) and libevent's "[warn] ..." lines that Open MPI sometimes
    prints while it tears a job down: what moesim itself printed."""
    lines, inside = [], False
    for line in text.splitlines():
        if re.fullmatch(r"-{20,}", line.strip()):
            inside = not inside
            continue
        if not inside and line.strip() and not line.startswith("[warn] "):
            lines.append(line)
    return lines


def run(exe, ranks, args, timeout=TIMEOUT, cwd=None):
    """mpirun --oversubscribe -n ranks exe args... in a session of its own. A run still going after
    `timeout` seconds is a hang: mpirun is asked to stop (SIGTERM, which it passes to its ranks),
    then whatever is left of that session (mpirun and the ranks it started) is killed, and
    TimeoutExpired is raised."""
    import signal
    import time
    cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), exe] + [str(a) for a in args]
    env = dict(os.environ)
    env.update(MPI_ENV)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout)
    return Run(cmd, subprocess.CompletedProcess(cmd, proc.returncode, out, err),
               time.monotonic() - t0)


def session_members(sid):
    """Processes of session `sid` (the session start_new_session gave mpirun), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # state ppid pgrp session ...
            pids.append(int(entry))
    return pids


ROUTING_HEADER = ["token", "choice", "expert", "gate", "accepted"]
ROUTING_HEADER_9 = ROUTING_HEADER + ["score", "rerouted"]  # issue 9: policies and routers


def read_routing(path):
    """The --dump-routing CSV as arrays: token (N*k), choice, expert, gate (float32), accepted;
    with issue 9's header also score (float32, sel[t][expert]) and rerouted (else score None and
    rerouted zeros)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if rows[0] not in (ROUTING_HEADER, ROUTING_HEADER_9):
        raise ValueError("%s: unexpected header %r" % (path, rows[0]))
    new = rows[0] == ROUTING_HEADER_9
    body = rows[1:]
    out = {
        "token": np.array([int(r[0]) for r in body], dtype=np.int64),
        "choice": np.array([int(r[1]) for r in body], dtype=np.int64),
        "expert": np.array([int(r[2]) for r in body], dtype=np.int64),
        "gate": np.array([float(r[3]) for r in body], dtype=np.float64).astype(np.float32),
        "accepted": np.array([int(r[4]) for r in body], dtype=np.int64),
        "score": (np.array([float(r[5]) for r in body], dtype=np.float64).astype(np.float32)
                  if new else None),
        "rerouted": (np.array([int(r[6]) for r in body], dtype=np.int64) if new
                     else np.zeros(len(body), dtype=np.int64)),
        "text": body,
    }
    return out


class Result:
    """A successful run with --json, --dump-routing and --dump-output read back."""

    def __init__(self, run_, json_doc, routing, y):
        self.run, self.json, self.routing, self.y = run_, json_doc, routing, y

    def routing_matrix(self, k):
        """expert, gate, accepted as (N, k) arrays, after checking the CSV is token-major."""
        r = self.routing
        n = len(r["token"]) // k
        assert np.array_equal(r["token"], np.repeat(np.arange(n), k)), "CSV not token-major"
        assert np.array_equal(r["choice"], np.tile(np.arange(k), n)), "CSV choices not 0..k-1"
        return (r["expert"].reshape(n, k), r["gate"].reshape(n, k),
                r["accepted"].reshape(n, k))

    def routing_columns(self, k):
        """Every column of issue 9's CSV as (N, k) arrays, after the checks of routing_matrix:
        a dict with expert, gate, accepted, score, rerouted."""
        expert, gate, acc = self.routing_matrix(k)
        n = expert.shape[0]
        r = self.routing
        return {"expert": expert, "gate": gate, "accepted": acc,
                "score": None if r["score"] is None else r["score"].reshape(n, k),
                "rerouted": r["rerouted"].reshape(n, k)}


def run_full(exe, ranks, args, workdir, tag, timeout=TIMEOUT, routing=True, output=True,
             quiet=True):
    """Run with --json (and the dumps) into workdir; fail the test if moesim does not exit 0.
    quiet=False keeps the text report (in .run.stdout)."""
    jpath = os.path.join(workdir, tag + ".json")
    cpath = os.path.join(workdir, tag + ".csv")
    ypath = os.path.join(workdir, tag + ".npy")
    extra = (["--quiet"] if quiet else []) + ["--json", jpath]
    if routing:
        extra += ["--dump-routing", cpath]
    if output:
        extra += ["--dump-output", ypath]
    r = run(exe, ranks, list(args) + extra, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("moesim failed (R=%d, %s)\n%s" % (ranks, tag, r.describe()))
    with open(jpath) as fh:
        doc = json.load(fh)
    rt = read_routing(cpath) if routing else None
    y = np.load(ypath) if output else None
    return Result(r, doc, rt, y)


# ---------------------------------------------------------------------------------------------
# Checking: collect every failure, print all of them, exit 1 if any

class Checker:
    def __init__(self, name):
        self.name, self.failures, self.passed = name, [], 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
        else:
            self.failures.append(what + (("\n    " + detail.replace("\n", "\n    ")) if detail else ""))
            print("FAIL: " + self.failures[-1], flush=True)
        return bool(cond)

    def equal(self, got, expected, what):
        return self.check(got == expected, what, "expected %r, got %r" % (expected, got))

    def close(self, got, expected, what, rtol, atol):
        got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
        if got.shape != expected.shape:
            return self.check(False, what, "shape %s, expected %s" % (got.shape, expected.shape))
        err = np.abs(got - expected)
        bad = err > atol + rtol * np.abs(expected)
        if not bad.any():
            return self.check(True, what)
        i = np.unravel_index(np.argmax(err - (atol + rtol * np.abs(expected))), err.shape)
        return self.check(False, what, "%d of %d values outside atol %g + rtol %g; worst at %s: "
                          "got %.9g expected %.9g" % (bad.sum(), bad.size, atol, rtol, i,
                                                      got[i], expected[i]))

    def guard(self, what, fn, *a, **kw):
        """Run one block of checks; an exception (a failed run, a timeout) is one failure."""
        try:
            return fn(*a, **kw)
        except subprocess.TimeoutExpired as e:
            self.check(False, what + ": timed out after %s s: %s" % (e.timeout, " ".join(e.cmd)))
        except AssertionError as e:
            self.check(False, what, str(e))
        return None

    def finish(self):
        if self.failures:
            print("%s: %d check(s) FAILED, %d passed" % (self.name, len(self.failures), self.passed))
            for d in WORKDIRS:
                print("files kept for inspection in %s" % d)
            sys.exit(1)
        for d in WORKDIRS:
            shutil.rmtree(d, ignore_errors=True)
        print("%s: all %d checks passed" % (self.name, self.passed))
        sys.exit(0)


WORKDIRS = []


def workdir():
    """A fresh temporary directory; removed by Checker.finish when every check passed, kept (and
    named) otherwise."""
    d = tempfile.mkdtemp(prefix="moesim-mpi-")
    WORKDIRS.append(d)
    return d


# ---------------------------------------------------------------------------------------------
# The generator of include/moesim/rng.h, in numpy uint64 arithmetic (wrapping)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x):
    """SplitMix64 finalizer on a uint64 array (Steele, Lea, Flood 2014)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def u64(seed, stream, counters):
    with np.errstate(over="ignore"):
        key = mix(np.array([seed], dtype=np.uint64) ^ mix(np.array([stream], dtype=np.uint64) + GOLDEN))
        c = np.asarray(counters, dtype=np.uint64)
        return mix(key + (c + np.uint64(1)) * GOLDEN)


def uniform(x):
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def normal64(seed, stream, first, n):
    """normal(seed, stream, first + i) for i < n in float64 (Box-Muller, cosine branch).
    log and cos go through Python's math module, i.e. the C library the C code calls, so the
    doubles match and rounding them to float32 gives the same bits."""
    i = np.arange(first, first + n, dtype=np.uint64)
    u1 = uniform(u64(seed, stream, np.uint64(2) * i))
    u2 = uniform(u64(seed, stream, np.uint64(2) * i + np.uint64(1)))
    lg = np.fromiter(map(math.log, u1.tolist()), dtype=np.float64, count=n)
    cs = np.fromiter(map(math.cos, (2.0 * math.pi * u2).tolist()), dtype=np.float64, count=n)
    return np.sqrt(-2.0 * lg) * cs


def fill_normal(seed, stream, first, n, scale=1.0):
    return (scale * normal64(seed, stream, first, n)).astype(np.float32)


def gen_tokens(seed, N, d):
    return fill_normal(seed, 1, 0, N * d).reshape(N, d)


def gen_router(seed, E, d):
    return fill_normal(seed, 2, 0, E * d, 1.0 / math.sqrt(d)).reshape(E, d)


def fill_uniform(seed, stream, first, n, bound):
    """bound * (2 uniform(seed, stream, first + i) - 1) in float64, rounded once to float32."""
    i = np.arange(first, first + n, dtype=np.uint64)
    return (bound * (2.0 * uniform(u64(seed, stream, i)) - 1.0)).astype(np.float32)


def gen_expert(seed, e, d, f):
    """W1 ~ U(-sqrt(3/d), sqrt(3/d)), W2 ~ U(-sqrt(3/f), sqrt(3/f)) (docs/generator.md)."""
    w1 = fill_uniform(seed, 0x100 + 2 * e, 0, f * d, math.sqrt(3.0 / d)).reshape(f, d)
    w2 = fill_uniform(seed, 0x101 + 2 * e, 0, d * f, math.sqrt(3.0 / f)).reshape(d, f)
    return w1, w2


# ---------------------------------------------------------------------------------------------
# The serial reference

def partition(n, parts, index):
    """Block partition: part `index` holds [first, first + count); the first n mod parts parts
    hold one more."""
    base, extra = divmod(n, parts)
    count = base + (1 if index < extra else 0)
    first = index * base + min(index, extra)
    return first, count


def owner(n, parts, item):
    for r in range(parts):
        first, count = partition(n, parts, r)
        if first <= item < first + count:
            return r
    raise ValueError(item)


def capacity(cf, G, k, E, min_capacity=0):
    """max(ceil(cf * G * k / E), min_capacity) with cf read as the decimal the user typed (exact
    rational), so that 1.1 * 100 is 110, not 111; None when dropless (cf 0), whatever the floor."""
    if float(cf) == 0:
        return None
    return max(math.ceil(Fraction(str(cf)) * G * k / E), int(min_capacity))


def capacity_needed(loads, groups, k, E):
    """What a dropless run reports (docs/model.md): loads (n_groups, E) before capacity, groups the
    tokens of each group. Returns (max_expert_load, cf_needed, cf_low) with the two capacity
    factors as exact Fractions: cf_needed = max over groups g of L_g E / (G_g k), L_g the group's
    largest load (the smallest cf whose exact slot count reaches every load), and cf_low = max over g
    of (L_g - 1) E / (G_g k), the largest cf at which some group's ceiling falls one slot short
    (every cf above it drops nothing). Groups without tokens or load are skipped."""
    loads = np.asarray(loads, dtype=np.int64)
    max_load, need, low = 0, Fraction(0), Fraction(0)
    for g, G in enumerate(groups):
        top = int(loads[g].max()) if loads.shape[1] else 0
        max_load = max(max_load, top)
        if G == 0 or top == 0:
            continue
        need = max(need, Fraction(top * E, G * k))
        low = max(low, Fraction((top - 1) * E, G * k))
    return max_load, need, low


def gelu(x):
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))


def gelu_grad(x):
    """d/dx x Phi(x) = Phi(x) + x phi(x), float64."""
    erf = np.frompyfunc(math.erf, 1, 1)
    x = np.asarray(x, dtype=np.float64)
    return (0.5 * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64)) +
            x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi))


def router_probs(h, W):
    """p = softmax(h W^T) in float64 from the float32 inputs: (N, E)."""
    z = h.astype(np.float64) @ W.astype(np.float64).T
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def topk(p, k):
    """Best k by p, best first, equal values to the lower id (a stable sort of -p)."""
    return np.argsort(-p, axis=1, kind="stable")[:, :k]


def sigmoid(z):
    """1 / (1 + exp(-z)) in float64 (exactly 0 far below, without a warning)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def balance_probs(p, score):
    """The P_i of the aux loss and the prediction from the scores: p itself for softmax; for
    sigmoid, s divided by its sum over the experts (Megatron-Core's aux-loss scores)."""
    if score == "sigmoid":
        sums = p.sum(axis=1, keepdims=True)
        return np.divide(p, sums, out=np.zeros_like(p), where=sums > 0)
    return p


# Issue 9 (policies and routers): the extra inputs of the reference. Streams of include/moesim/rng.h:
# ROUTER_NOISE = 4 (W_noise, laid out like W), GATE_NOISE = 5 (eps, counter t*E + e), JITTER = 6
# (counter t*d + j), DROP = 7 (the random policy's key, counter t*k + c). Shared expert s has the
# weights of expert id SHARED_EXPERT_BASE + s.
POLICIES = ("position", "probs", "choice", "random", "reroute")
SHARED_EXPERT_BASE = 65536


def gen_noise_router(seed, E, d):
    """W_noise of --noisy-top-k: normal(seed, 4, e*d + j) / sqrt(d), (E, d) float32."""
    return fill_normal(seed, 4, 0, E * d, 1.0 / math.sqrt(d)).reshape(E, d)


def gate_noise(seed, N, E, first=0):
    """eps[t][e] = normal(seed, 5, t*E + e) in float64, (N, E)."""
    return normal64(seed, 5, first * E, N * E).reshape(N, E)


def softplus(x):
    """log(1 + e^x) in float64, without overflow."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def jitter_tokens(seed, h, eps):
    """The routing input of --input-jitter: h[t][j] * (1 - eps + 2 eps u), u = uniform(seed, 6,
    t*d + j), in float64, rounded to float32 once. h (N, d) holds the global tokens 0..N-1."""
    N, d = h.shape
    u = uniform(u64(seed, 6, np.arange(N * d, dtype=np.uint64))).reshape(N, d)
    return (h.astype(np.float64) * (1.0 - eps + 2.0 * eps * u)).astype(np.float32)


def random_drop_keys(seed, N, k):
    """The random policy's keys: uniform(seed, 7, t*k + c), (N, k) float64."""
    return uniform(u64(seed, 7, np.arange(N * k, dtype=np.uint64))).reshape(N, k)


def group_scores(sel, G, per_group):
    """(N, G): the sum of the `per_group` largest sel values of each of G contiguous groups."""
    N, E = sel.shape
    s = -np.sort(-sel.reshape(N, G, E // G), axis=2)
    return s[:, :, :per_group].sum(axis=2)


def grouped_topk(sel, k, G, M):
    """Group-limited top-k (DeepSeek-V2/V3): each token keeps its M best groups by group_scores
    with k // M per group (equal scores to the lower group id) and takes its top-k by sel inside
    them (equal values to the lower id). Returns (expert (N, k), kept groups (N, M))."""
    N, E = sel.shape
    kept = np.argsort(-group_scores(sel, G, k // M), axis=1, kind="stable")[:, :M]
    mask = np.zeros((N, G), dtype=bool)
    mask[np.arange(N)[:, None], kept] = True
    masked = np.where(np.repeat(mask, E // G, axis=1), sel, -np.inf)
    return topk(masked, k), kept


def reach_stats(expert, E, R, node_of_rank):
    """How far each token's experts reach (expert: (N, k), or one list of experts per token, maybe
    empty): distinct owner ranks and distinct nodes per token, as {"ranks": {"mean", "max",
    "histogram"}, "nodes": {...}}; histogram[j] = tokens reaching exactly j, up to the largest j
    seen (as the JSON gives it)."""
    own = np.array([owner(E, R, e) for e in range(E)])
    nodes = np.asarray(node_of_rank)
    out = {}
    for name, of in (("ranks", own), ("nodes", nodes[own])):
        n = np.array([len(set(of[np.asarray(row, dtype=np.int64)].tolist())) for row in expert],
                     dtype=np.int64)
        hist = np.bincount(n).tolist() if n.size else [0]
        out[name] = {"mean": float(n.mean()) if n.size else 0.0,
                     "max": int(n.max()) if n.size else 0, "histogram": hist}
    return out


def trim_histogram(h):
    h = list(h)
    while len(h) > 1 and h[-1] == 0:
        h.pop()
    return h


def serve_by_keys(expert, keys, bounds, caps, E):
    """An ordered policy: per group (bounds) and expert, the caps[g] assignments first in
    (key, token, choice) order are served. expert, keys (N, k). Returns accepted (N, k) 0/1."""
    N, k = expert.shape
    acc = np.zeros((N, k), dtype=np.int64)
    for (first, count), C in zip(bounds, caps):
        for e in range(E):
            t, c = np.nonzero(expert[first:first + count] == e)
            t = t + first
            if C is None:
                acc[t, c] = 1
                continue
            order = np.lexsort((c, t, keys[t, c]))[:C]
            acc[t[order], c[order]] = 1
    return acc


def reroute(expert0, sel, bounds, caps, E, prefer=None, tol=0.0):
    """The reroute policy on the router's choices expert0 (N, k) with selection scores sel (N, E).
    Round 0 is position. Round r >= 1: in token, then choice order, every assignment still dropped
    (and not dropped for good) proposes to the best expert by sel (equal to the lower id) among
    those with room at the end of round r-1 and not held by the token (its top-k, its served
    reroutes, the proposals of its earlier choices this round); each expert serves its proposals in
    that order up to its room; no candidate: dropped for good. Stops when a round proposes nothing.
    prefer: {(t, c): expert} (moesim's serving experts): where the reference's best candidate and
    prefer's differ by at most tol in sel (a near tie float32 may break either way) prefer's is
    taken. Returns (accepted, serving expert, rerouted) (N, k), the number of adoptions and the
    rounds after round 0 that made a proposal (the most of any group)."""
    N, k = expert0.shape
    acc = np.zeros((N, k), dtype=np.int64)
    rer = np.zeros((N, k), dtype=np.int64)
    serve = expert0.copy()
    adopted = rounds = 0
    for (first, count), C in zip(bounds, caps):
        toks = range(first, first + count)
        if C is None:
            acc[first:first + count] = 1
            continue
        used = np.zeros(E, dtype=np.int64)
        for t in toks:  # round 0: position
            for c in range(k):
                e = expert0[t, c]
                if used[e] < C:
                    acc[t, c] = 1
                    used[e] += 1
        room = C - used
        final = np.zeros((N, k), dtype=bool)
        r = 0
        while True:
            proposals = []
            for t in toks:
                held = set(expert0[t].tolist())
                held.update(int(serve[t, c]) for c in range(k) if acc[t, c] and rer[t, c])
                for c in range(k):
                    if acc[t, c] or final[t, c]:
                        continue
                    cands = [e for e in range(E) if room[e] > 0 and e not in held]
                    if not cands:
                        final[t, c] = True
                        continue
                    best = min(cands, key=lambda e: (-sel[t, e], e))
                    if prefer is not None:
                        x = prefer.get((t, c))
                        if x is not None and x != best and x in cands and \
                                sel[t, x] >= sel[t, best] - tol:
                            best = x
                            adopted += 1
                    proposals.append((t, c, best))
                    held.add(best)
            if not proposals:
                break
            r += 1
            rounds = max(rounds, r)
            taken = np.zeros(E, dtype=np.int64)
            for t, c, e in proposals:
                if taken[e] < room[e]:
                    taken[e] += 1
                    acc[t, c], rer[t, c], serve[t, c] = 1, 1, e
            room -= taken
    return acc, serve, rer, adopted, rounds


class Reference:
    """Serial reference of one step. Inputs float32 (as moesim holds them), arithmetic float64.
    score, bias (E values or None), topk_scale and min_capacity are the router options of issue 9;
    their defaults are the softmax router as before.

    Keyword-only (issue 9, policies and routers; defaults change nothing):
      seed            needed by the random policy, noisy top-k and input jitter
      policy          position | probs | choice | random | reroute (module POLICIES)
      routing         token-choice | expert-choice
      expert_groups, group_top_k, ranks_per_node
                      group-limited top-k over G contiguous groups keeping M; G = 0 with M > 0
                      means one group per node, node = rank // ranks_per_node (one node if None)
      noisy_top_k     z += eps softplus(h W_noise^T)
      input_jitter    routing sees h * U(1 - eps, 1 + eps), the experts h
      shared          list of (W1, W2) of always-on shared experts, added with gate 1
      logit_bias      E values added to every logit (the workload bias)"""

    def __init__(self, h, W, experts, k, cf, scope="global", ranks=1, renormalize=False,
                 score="softmax", bias=None, topk_scale=1.0, min_capacity=0, **opts):
        self.h, self.W, self.k, self.cf, self.scope, self.R = h, W, k, cf, scope, ranks
        self.N, self.d = h.shape
        self.E = W.shape[0]
        self.experts_w = experts  # list of (W1, W2) or a function e -> (W1, W2)
        self.renormalize = renormalize
        self._options(**opts)
        hr = h
        if self.input_jitter:
            hr = jitter_tokens(self.seed, h, self.input_jitter)
        self.h_route = hr
        h64 = hr.astype(np.float64)
        z = h64 @ W.astype(np.float64).T
        if self.logit_bias is not None:
            z = z + np.asarray(self.logit_bias, dtype=np.float32).astype(np.float64)
        if self.noisy_top_k:
            zn = h64 @ gen_noise_router(self.seed, self.E, self.d).astype(np.float64).T
            z = z + gate_noise(self.seed, self.N, self.E) * softplus(zn)
        self.z = z
        if score == "sigmoid":
            self.p = sigmoid(z)
        else:  # router_probs' arithmetic
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            self.p = p / p.sum(axis=1, keepdims=True)
        self._select(score, bias, topk_scale, min_capacity)

    def _options(self, seed=None, policy="position", routing="token-choice", expert_groups=0,
                 group_top_k=0, ranks_per_node=None, noisy_top_k=False, input_jitter=0.0,
                 shared=None, logit_bias=None):
        if policy not in POLICIES:
            raise ValueError("policy %r" % policy)
        if routing not in ("token-choice", "expert-choice"):
            raise ValueError("routing %r" % routing)
        self.seed, self.policy, self.routing = seed, policy, routing
        self.ranks_per_node = ranks_per_node
        rpn = ranks_per_node or self.R
        self.node_of_rank = [r // rpn for r in range(self.R)]
        self.n_nodes = max(self.node_of_rank) + 1
        self.group_top_k = int(group_top_k)
        self.expert_groups = int(expert_groups) or (self.n_nodes if self.group_top_k else 0)
        self.noisy_top_k, self.input_jitter = bool(noisy_top_k), float(input_jitter)
        self.shared = list(shared or [])
        self.logit_bias = logit_bias
        if (policy == "random" or noisy_top_k or input_jitter) and seed is None:
            raise ValueError("this option needs the seed")

    def _select(self, score, bias, topk_scale, min_capacity):
        """The top-k on the selection key p + b (p itself without a bias); with a group limit,
        inside the kept groups (self.expert_unlimited is the plain top-k)."""
        if not hasattr(self, "policy"):
            self._options()
        self.score, self.topk_scale, self.min_capacity = score, float(topk_scale), int(min_capacity)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32).reshape(-1)
        self.sel = self.p if self.bias is None else self.p + self.bias.astype(np.float64)
        self.expert_unlimited = topk(self.sel, self.k)
        if self.group_top_k:
            G, M = self.expert_groups, self.group_top_k
            if self.E % G or not 1 <= M <= G or self.k > M * (self.E // G):
                raise ValueError("group limit G=%d M=%d with E=%d k=%d" % (G, M, self.E, self.k))
            self.expert, self.kept_groups = grouped_topk(self.sel, self.k, G, M)
            self.group_score = group_scores(self.sel, G, self.k // M)
        else:
            self.expert = self.expert_unlimited.copy()
        self.ties_adopted = 0

    def _kept_mask(self, t, g, tol):
        """With a group limit: the experts of a set of M groups that contains every group of the
        choice g and is a best M by group score within tol; None if there is no such set."""
        G, M = self.expert_groups, self.group_top_k
        size = self.E // G
        used = sorted(set((np.asarray(g) // size).tolist()))
        if len(used) > M:
            return None
        score = self.group_score[t]
        rest = [x for x in np.argsort(-score, kind="stable").tolist() if x not in used]
        keep = used + rest[:M - len(used)]
        out = [x for x in range(G) if x not in keep]
        gtol = tol * max(1, self.k // M)
        if out and score[keep].min() < score[out].max() - gtol:
            return None
        mask = np.zeros(self.E, dtype=bool)
        for x in keep:
            mask[x * size:(x + 1) * size] = True
        return mask

    def adopt_near_ties(self, got_expert, tol):
        """Where the float64 reference and moesim's float32 router disagree only between experts
        whose probabilities differ by less than `tol` (a near tie that float32 rounding may break
        either way), take moesim's choice so that capacity decisions downstream are compared on
        the same routing. Returns a list of tokens whose choice is not explained by a near tie.
        With a group limit the choice must also lie in M groups that are a best M within tol."""
        bad = []
        for t in np.nonzero((got_expert != self.expert).any(axis=1))[0]:
            g = got_expert[t]
            pt = self.sel[t]  # the selection key: p, or p + b with a selection bias
            ok = len(set(g.tolist())) == self.k and all(0 <= e < self.E for e in g)
            if ok and self.group_top_k:
                mask = self._kept_mask(t, g, tol)
                ok = mask is not None
                if ok:
                    pt = np.where(mask, pt, -np.inf)
            if ok:
                chosen = pt[g]
                others = np.delete(pt, g)
                others = others[np.isfinite(others)]
                ok = all(chosen[c] >= chosen[c + 1] - tol for c in range(self.k - 1))
                ok = ok and (others.size == 0 or chosen.min() >= others.max() - tol)
            if ok:
                self.expert[t] = g
                self.ties_adopted += 1
            else:
                bad.append(int(t))
        return bad

    def groups(self):
        if self.scope == "global":
            return [(0, self.N)]
        return [partition(self.N, self.R, r) for r in range(self.R)]

    def gate_of(self, t, e):
        """The gate token t would get from expert e (a rerouted slot's gate): p[t][e], divided by
        the sum of p over the token's k original choices when normalizing, times topk_scale."""
        g = self.p[t, e]
        if self.renormalize or self.score == "sigmoid":
            s = self.p[t, self.expert[t]].sum()
            g = g / s if s > 0 else 0.0
        return g * self.topk_scale

    def keys(self, gate32):
        """The ordered policies' keys (N, k): position 0, probs -gate (float32 gate), choice c,
        random uniform(seed, 7, t*k + c)."""
        N, k = self.N, self.k
        if self.policy == "probs":
            return -np.asarray(gate32, dtype=np.float32).astype(np.float64)
        if self.policy == "choice":
            return np.tile(np.arange(k, dtype=np.float64), (N, 1))
        if self.policy == "random":
            return random_drop_keys(self.seed, N, k)
        return np.zeros((N, k), dtype=np.float64)

    def solve(self, key_gate=None, prefer=None, tol=0.0):
        """Gates, acceptance, y and every count, from self.expert. key_gate (N, k) float32
        replaces the reference's gates in the probs policy's keys (to follow moesim's float32
        rounding of near-equal gates); prefer and tol break reroute's (or expert choice's) near
        ties as moesim did (reroute: {(t, c): expert}; expert choice: (N, E) 0/1)."""
        if self.routing == "expert-choice":
            return self._solve_expert_choice(prefer, tol)
        N, k, E = self.N, self.k, self.E
        rows = np.arange(N)[:, None]
        gate = self.p[rows, self.expert]  # the score, never the selection bias
        if self.renormalize or self.score == "sigmoid":
            sums = gate.sum(axis=1, keepdims=True)
            gate = np.divide(gate, sums, out=np.zeros_like(gate), where=sums > 0)
        if self.topk_scale != 1.0:
            gate = gate * self.topk_scale
        bounds = self.groups()
        self.group_caps = [capacity(self.cf, count, k, E, self.min_capacity)
                           for _, count in bounds]
        # (n_groups, E): assignments each group routes to each expert
        self.loads = np.array([np.bincount(self.expert[first:first + count].ravel(), minlength=E)
                               for first, count in bounds], dtype=np.int64).reshape(len(bounds), E)
        self.reroute_adopted = self.reroute_rounds = 0
        if self.policy == "reroute":
            acc, serve, rer, self.reroute_adopted, self.reroute_rounds = reroute(
                self.expert, self.sel, bounds, self.group_caps, E, prefer, tol)
            for t, c in zip(*np.nonzero(rer)):
                gate[t, c] = self.gate_of(t, serve[t, c])
        else:
            kg = gate.astype(np.float32) if key_gate is None else key_gate
            acc = serve_by_keys(self.expert, self.keys(kg), bounds, self.group_caps, E)
            serve, rer = self.expert.copy(), np.zeros((N, k), dtype=np.int64)
        self.gate = gate
        self.accepted, self.serve_expert, self.rerouted = acc, serve, rer
        self.routed_per_expert = np.bincount(self.expert.ravel(), minlength=E)
        self.accepted_per_expert = np.bincount(serve[acc == 1], minlength=E).astype(np.int64)
        self.rerouted_in = np.bincount(serve[(acc == 1) & (rer == 1)], minlength=E).astype(np.int64)
        self.dropped_per_expert = self.routed_per_expert - (self.accepted_per_expert -
                                                            self.rerouted_in)
        self.drops_rerouted = int(rer.sum())
        # drops.dropped_assignments = sum of experts[].dropped (a rerouted assignment was dropped by
        # its routed expert); still_dropped = the assignments no expert served
        self.dropped_assignments = int(self.dropped_per_expert.sum())
        self.still_dropped = int(N * k - acc.sum())
        if self.group_caps[0] is None:
            self.capacity_per_expert = None
        else:
            self.capacity_per_expert = sum(self.group_caps)
        self.dropped_tokens = int((acc.sum(axis=1) == 0).sum())
        self.experts_per_token = np.bincount(acc.sum(axis=1), minlength=k + 1).tolist()
        self.unchosen_tokens = self.dropped_tokens
        self.reach = reach_stats(self.expert, E, self.R, self.node_of_rank)
        self.reach_unlimited = (reach_stats(self.expert_unlimited, E, self.R, self.node_of_rank)
                                if self.group_top_k else None)
        return self

    def _solve_expert_choice(self, prefer, tol):
        """Expert choice (Zhou et al. 2022): per group, expert e takes the C tokens of highest
        sel[t][e] (equal: lower token id), C = min(capacity, group size); gate p * topk_scale.
        prefer (N, E): moesim's choice, adopted per group and expert when it is a best C within
        tol."""
        N, k, E = self.N, self.k, self.E
        chosen = np.zeros((N, E), dtype=np.int64)
        self.group_caps = []
        for first, count in self.groups():
            C = capacity(self.cf, count, k, E, self.min_capacity)
            C = count if C is None else min(C, count)
            self.group_caps.append(C)
            for e in range(E):
                s = self.sel[first:first + count, e]
                take = np.lexsort((np.arange(count), -s))[:C]
                mine = np.zeros(count, dtype=bool)
                mine[take] = True
                if prefer is not None:
                    got = np.asarray(prefer[first:first + count, e]) != 0
                    if (got != mine).any() and got.sum() == C and \
                            (C == 0 or C == count or s[got].min() >= s[~got].max() - tol):
                        mine = got
                        self.ties_adopted += 1
                chosen[first:first + count, e] = mine
        self.chosen = chosen
        self.gate_ec = self.p * self.topk_scale
        self.accepted_per_expert = chosen.sum(axis=0)
        per_token = chosen.sum(axis=1)
        self.experts_per_token = np.bincount(per_token, minlength=E + 1).tolist()
        self.unchosen_tokens = int((per_token == 0).sum())
        self.dropped_tokens = self.unchosen_tokens
        self.routed_per_expert = self.accepted_per_expert  # nothing overflows
        self.expected_rows()
        # how far a token reaches: the experts that took it
        self.reach = reach_stats([np.nonzero(row)[0] for row in chosen], E, self.R,
                                 self.node_of_rank)
        self.reach_unlimited = None
        return self

    def expected_rows(self):
        """Expert choice: the CSV rows (token, choice, expert), token-major, experts ascending."""
        t, e = np.nonzero(self.chosen)  # row-major: token-major, experts ascending
        first = np.searchsorted(t, t)   # index of the token's first row
        self.ec_rows = {"token": t, "choice": np.arange(len(t)) - first, "expert": e,
                        "gate": self.gate_ec[t, e], "score": self.sel[t, e]}
        return self.ec_rows

    def _ffn(self, w, x):
        w1, w2 = w
        return gelu(x @ w1.astype(np.float64).T) @ w2.astype(np.float64).T

    def output(self):
        """y (N, d) float64: h + the served assignments' gate * FFN + every shared expert's FFN."""
        h64 = self.h.astype(np.float64)
        y = h64.copy()
        for e in range(self.E):
            if self.routing == "expert-choice":
                tok = np.nonzero(self.chosen[:, e])[0]
                g = self.gate_ec[tok, e]
            else:
                tok, ch = np.nonzero((self.serve_expert == e) & (self.accepted == 1))
                g = self.gate[tok, ch]
            if tok.size == 0:
                continue
            w = self.experts_w(e) if callable(self.experts_w) else self.experts_w[e]
            np.add.at(y, tok, g[:, None] * self._ffn(w, h64[tok]))
        for w in self.shared:
            y += self._ffn(w, h64)
        return y

    def dispatch_bytes(self):
        """(R, R) [src][dst] bytes of accepted rows for the rank count self.R (to the serving
        expert's owner; shared experts move nothing)."""
        R = self.R
        m = np.zeros((R, R), dtype=np.int64)
        src = np.array([owner(self.N, R, t) for t in range(self.N)])
        eown = np.array([owner(self.E, R, e) for e in range(self.E)])
        if self.routing == "expert-choice":
            t, e = np.nonzero(self.chosen)
            np.add.at(m, (src[t], eown[e]), 1)
            return m * self.d * 4
        for c in range(self.k):
            ok = self.accepted[:, c] == 1
            np.add.at(m, (src[ok], eown[self.serve_expert[ok, c]]), 1)
        return m * self.d * 4


def shared_weights(seed, d, F, S):
    """The S shared experts' (W1, W2): the generated expert of id SHARED_EXPERT_BASE + s."""
    return [gen_expert(seed, SHARED_EXPERT_BASE + s, d, F) for s in range(S)]


def generated_reference(seed, N, d, E, k, cf, f=None, scope="global", ranks=1, renormalize=False,
                        shared_experts=0, shared_ffn=None, **router):
    """Reference of a generated batch; router takes Reference's score, bias, topk_scale,
    min_capacity and its keyword options (the seed is passed on); shared_experts S with inner size
    shared_ffn (default f) adds the generated shared experts."""
    f = f or 2 * d
    cache = {}

    def experts(e):
        if e not in cache:
            cache[e] = gen_expert(seed, e, d, f)
        return cache[e]

    router.setdefault("seed", seed)
    if shared_experts:
        router["shared"] = shared_weights(seed, d, shared_ffn or f, shared_experts)
    return Reference(gen_tokens(seed, N, d), gen_router(seed, E, d), experts, k, cf, scope,
                     ranks, renormalize, **router)


# ---------------------------------------------------------------------------------------------
# .npy files, good and deliberately bad

def npy_bytes(header_dict_text, body, magic=b"\x93NUMPY", version=(1, 0)):
    """A .npy file with a hand-written header (for malformed cases)."""
    hdr = header_dict_text.encode("latin1")
    pre = len(magic) + 2 + (2 if version[0] == 1 else 4)
    pad = (-(pre + len(hdr) + 1)) % 64
    hdr = hdr + b" " * pad + b"\n"
    size = len(hdr).to_bytes(2 if version[0] == 1 else 4, "little")
    return magic + bytes(version) + size + hdr + body


def write(path, data):
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def json_counts(doc):
    """The parts of the JSON that must not depend on the rank count."""
    return {
        "experts": [{k: e[k] for k in ("id", "routed", "accepted", "dropped", "capacity")}
                    for e in doc["experts"]],
        "drops": doc["drops"],
        "waste": doc["waste"],
        "f": doc["load_balance"]["f"],
    }


# ---------------------------------------------------------------------------------------------
# Helpers of the workload, prediction, ablation and replay tests (issue 4). Everything below is
# additive: nothing above changes.

# The keys of an ablation entry that describe a measurement (null with --predict-only), and the
# keys of its `predicted` object (docs/json.md).
ABLATION_MEASURED = ("dropped_assignments", "dropped_tokens", "empty_slots", "flops_wasted",
                     "dispatch_bytes", "dispatch_seconds", "combine_seconds", "expert_seconds",
                     "step_seconds", "closed_form_error")
ABLATION_PREDICTED = ("expected_dropped_assignments", "expected_empty_slots",
                      "exact_dropped_assignments", "exact_empty_slots",
                      "expected_dropped_assignments_uniform", "expected_empty_slots_uniform",
                      "max_expert_load", "cf_needed")


def ragged_blocks(N, ranks):
    """--workload source-ragged's blocks: c(r + 1) - c(r), c(m) = floor(N m (m + 1) / (R (R + 1)))."""
    c = [N * m * (m + 1) // (ranks * (ranks + 1)) for m in range(ranks + 1)]
    return [c[r + 1] - c[r] for r in range(ranks)]


def token_blocks(N, ranks, blocks=None):
    """(first, count) of each rank's tokens: moe_partition's even blocks, or the given counts."""
    if blocks is None:
        return [partition(N, ranks, r) for r in range(ranks)]
    starts = np.concatenate([[0], np.cumsum(blocks)[:-1]]).tolist()
    return [(int(f), int(c)) for f, c in zip(starts, blocks)]


def group_sizes(N, scope, ranks, blocks=None):
    """Tokens of each capacity group: [N] in global scope, the rank blocks in local scope."""
    if scope == "global":
        return [N]
    return [c for _, c in token_blocks(N, ranks, blocks)]


def group_bounds(N, scope, ranks, blocks=None):
    if scope == "global":
        return [(0, N)]
    return token_blocks(N, ranks, blocks)


def capacity_total(cf, N, k, E, scope, ranks, min_capacity=0):
    """Slots per expert summed over the capacity groups; None when dropless."""
    if float(cf) == 0:
        return None
    return sum(capacity(cf, G, k, E, min_capacity) for G in group_sizes(N, scope, ranks))


def apply_capacity(expert, E, cf, scope="global", ranks=1, min_capacity=0, blocks=None):
    """The position policy applied to a routing `expert` (N, k) (e.g. read from a --dump-routing
    CSV): per group and expert, earlier token ids are served first, up to
    C = max(ceil(cf G k / E), min_capacity).
    Returns a dict: accepted (N, k) 0/1, capacity (per expert, summed over groups, or None),
    routed and accepted_per_expert (E), dropped_assignments, dropped_tokens, slots, empty_slots,
    loads (n_groups, E)."""
    expert = np.asarray(expert, dtype=np.int64)
    N, k = expert.shape
    acc = np.zeros((N, k), dtype=np.int64)
    loads = []
    for first, count in group_bounds(N, scope, ranks, blocks):
        C = capacity(cf, count, k, E, min_capacity)
        used = np.zeros(E, dtype=np.int64)
        for t in range(first, first + count):
            for c in range(k):
                e = expert[t, c]
                if C is None or used[e] < C:
                    acc[t, c] = 1
                used[e] += 1
        loads.append(used)
    routed = np.bincount(expert.ravel(), minlength=E).astype(np.int64)
    accepted = np.bincount(expert.ravel(), weights=acc.ravel(), minlength=E).astype(np.int64)
    cap = None if float(cf) == 0 else sum(capacity(cf, G, k, E, min_capacity)
                                          for G in group_sizes(N, scope, ranks, blocks))
    slots = int(accepted.sum()) if cap is None else cap * E
    return {"accepted": acc, "capacity": cap, "routed": routed, "accepted_per_expert": accepted,
            "dropped_assignments": int(N * k - acc.sum()),
            "dropped_tokens": int((acc.sum(axis=1) == 0).sum()),
            "slots": slots, "empty_slots": int(slots - accepted.sum()),
            "loads": np.array(loads, dtype=np.int64)}


def binomial_overflow(G, q, C):
    """For L ~ Binomial(G, q): (E[max(L - C, 0)], E[max(C - L, 0)]), summed exactly over the
    probability mass with integer binomial coefficients (independent of moesim's lgamma form)."""
    q = min(max(q, 0.0), 1.0)
    if q in (0.0, 1.0):  # L is G q surely
        L = int(G * q)
        return float(max(L - C, 0)), float(max(C - L, 0))
    over = under = 0.0
    lq, l1q = math.log(q), math.log1p(-q)
    for l in range(G + 1):
        # math.log takes the exact integer coefficient, however large
        pmf = math.exp(math.log(math.comb(G, l)) + l * lq + (G - l) * l1q)
        over += max(l - C, 0) * pmf
        under += max(C - l, 0) * pmf
    return over, under


def closed_form(q, cf, N, k, E, scope, ranks, min_capacity=0):
    """The closed-form prediction: sum over groups and experts of binomial_overflow with the
    selection probabilities q (E values). (0, 0) when dropless."""
    if float(cf) == 0:
        return 0.0, 0.0
    dropped = empty = 0.0
    for G in group_sizes(N, scope, ranks):
        C = capacity(cf, G, k, E, min_capacity)
        for qi in q:
            d_, e_ = binomial_overflow(G, qi, C)
            dropped += d_
            empty += e_
    return dropped, empty


def workload_bias(E, skew=0.0, hot_n=0, hot_bias=0.0):
    """The router bias of include/moesim/workload.h, rounded to float32 once as moesim does:
    -skew ln(e + 1) + hot_bias on experts 0..hot_n-1."""
    return np.array([-skew * math.log(e + 1.0) + (hot_bias if e < hot_n else 0.0)
                     for e in range(E)], dtype=np.float64).astype(np.float32)


def add_token_mean(seed, h, mu):
    """--token-mean MU: h + MU m in double, rounded once, m_j = normal(seed, 3, 2^61 + j)."""
    d = h.shape[1]
    m = normal64(seed, 3, 1 << 61, d)
    return (h.astype(np.float64) + mu * m[None, :]).astype(np.float32)


def cluster_of(seed, g, clusters):
    """u64(seed, 3, 2^62 + g) mod clusters, for an array of global token ids g."""
    g = np.asarray(g, dtype=np.uint64)
    return (u64(seed, 3, np.uint64(1 << 62) + g) % np.uint64(clusters)).astype(np.int64)


def gen_clustered_tokens(seed, N, d, clusters):
    """h_g = (m_c(g) + 0.5 n_g) / sqrt(1.25), in double from the float32 noise n_g and the double
    centre entries normal(seed, 3, m d + j), rounded once to float32 (include/moesim/workload.h)."""
    noise = gen_tokens(seed, N, d).astype(np.float64)
    centres = normal64(seed, 3, 0, clusters * d).reshape(clusters, d)
    c = cluster_of(seed, np.arange(N), clusters)
    scale = 1.0 / math.sqrt(1.25)
    return ((centres[c] + 0.5 * noise) * scale).astype(np.float32), c


class LogitsReference(Reference):
    """The serial reference routed from given logits z (N, E) instead of h W^T: p = softmax(z) in
    float64 from float32 z. Everything downstream (capacity, gates, y) is Reference's."""

    def __init__(self, z, h, experts, k, cf, scope="global", ranks=1, renormalize=False,
                 score="softmax", bias=None, topk_scale=1.0, min_capacity=0, **opts):
        self.h, self.k, self.cf, self.scope, self.R = h, k, cf, scope, ranks
        self.N, self.d = h.shape
        self.E = z.shape[1]
        self.W = None
        self.experts_w = experts
        self.renormalize = renormalize
        # Reference's keyword options that act after the logits (policy, routing, group limit,
        # shared experts); noise and jitter act on h W^T, which given logits replace
        self._options(**opts)
        if self.noisy_top_k or self.input_jitter:
            raise ValueError("LogitsReference: noise and jitter need h W^T")
        z64 = np.asarray(z, dtype=np.float32).astype(np.float64)
        if score == "sigmoid":
            self.p = sigmoid(z64)
        else:
            z64 = z64 - z64.max(axis=1, keepdims=True)
            p = np.exp(z64)
            self.p = p / p.sum(axis=1, keepdims=True)
        self._select(score, bias, topk_scale, min_capacity)


def expert_weights(seed, d, f):
    """A cached e -> (W1, W2) of the generated experts, for Reference."""
    cache = {}

    def experts(e):
        if e not in cache:
            cache[e] = gen_expert(seed, e, d, f)
        return cache[e]

    return experts


def spearman(x, y):
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v), dtype=np.float64)
        r[order] = np.arange(len(v), dtype=np.float64)
        for val in np.unique(v):  # ties share their mean rank
            m = v == val
            r[m] = r[m].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / den if den > 0 else 0.0


def check_refused(ck, exe, tag, ranks, args, patterns, workdir_, timeout=20, prompt=10.0):
    """A refusal: the run ends within `prompt` seconds (a hang hits `timeout`), exits 2, prints
    exactly one `moesim: error: ...` line on stderr that matches every pattern (case-insensitive),
    nothing on stdout, and writes nothing at the --json / --dump-routing / --dump-output paths it
    is given (in a fresh directory under workdir_)."""
    out = tempfile.mkdtemp(prefix="refused-", dir=workdir_)
    outputs = ["--json", os.path.join(out, "r.json"), "--dump-routing", os.path.join(out, "r.csv"),
               "--dump-output", os.path.join(out, "y.npy")]
    try:
        r = run(exe, ranks, list(args) + outputs, timeout=timeout, cwd=out)
    except subprocess.TimeoutExpired:
        ck.check(False, tag + ": ends within %d s (it hung)" % timeout)
        return None
    ck.equal(r.returncode, 2, tag + ": exit status 2")
    ck.check(r.elapsed < prompt, tag + ": refused promptly (< %g s)" % prompt,
             "took %.1f s" % r.elapsed)
    # libevent inside Open MPI sometimes warns while mpirun tears the job down ("[warn] Epoll MOD(1)
    # on fd 25 failed ..."): not moesim's output, so set aside like mpirun's framed notices
    lines = [l for l in r.own_stderr if not l.startswith("[warn] ")]
    if ck.check(len(lines) == 1 and lines[0].startswith("moesim: error: "),
                tag + ": exactly one 'moesim: error:' line on stderr", r.describe()):
        for pat in patterns:
            ck.check(re.search(pat, lines[0], re.IGNORECASE),
                     tag + ": message names the problem (/%s/)" % pat, lines[0])
        print("%-32s R=%d  %.2f s  %s" % (tag, ranks, r.elapsed, lines[0]))
    ck.equal(r.stdout, "", tag + ": nothing on stdout")
    ck.equal(sorted(os.listdir(out)), [], tag + ": nothing written at the output paths")
    return r


def _table_rows(lines, start, stop_prefix):
    rows = []
    for line in lines[start:]:
        if line.strip().startswith(stop_prefix) or not line.strip():
            break
        rows.append(line)
    return rows


def prediction_table(stdout):
    """The rows of the 'Prediction, before any token row moves' table of the text report, as
    dicts: cf, capacity (None when dropless), uniform / router (closed form: dropped, empty),
    exact (dropped, empty). None if the table is missing."""
    lines = stdout.splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith("Prediction, before any token row moves")]
    if not head:
        return None
    units = [i for i in range(head[0], len(lines)) if re.match(r"\s+cf\s+capacity\s+\|", lines[i])]
    if not units:
        return None
    out = []
    for line in _table_rows(lines, units[0] + 1, "("):
        left, uni, rou, exa = line.split("|")
        cf, cap = left.split()
        out.append({"cf": float(cf), "capacity": None if cap == "dropless" else int(cap),
                    "uniform": tuple(float(v) for v in uni.split()),
                    "router": tuple(float(v) for v in rou.split()),
                    "exact": tuple(int(v) for v in exa.split())})
    return out


def ablation_table(stdout):
    """The rows of the 'Capacity-factor ablation' table, as dicts: cf, capacity (None for '-'),
    dropped, dropped_tokens, empty, exact_dropped, closed_form. None if the table is missing."""
    lines = stdout.splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith("Capacity-factor ablation")]
    if not head:
        return None
    out = []
    for line in _table_rows(lines, head[0] + 3, "("):
        left, right = line.split("|")
        v, w = left.split(), right.split()
        out.append({"cf": float(v[0]), "capacity": None if v[1] == "-" else int(v[1]),
                    "dropped": int(v[2]), "dropped_tokens": int(v[3]), "empty": int(v[4]),
                    "exact_dropped": int(w[0]), "closed_form": float(w[1])})
    return out


# ---------------------------------------------------------------------------------------------
# Topology: a reference of docs/topology.md (locality classes) and docs/projection.md (the
# alpha-beta model and the three stages of the two-level exchange), over the JSON's placement
# objects and byte matrices. Used by test_topology.py.

LOCALITIES = ["same_rank", "same_numa", "same_package", "same_node", "other_node"]


def locality_of(a, b):
    """Class of traffic from placement a to placement b (JSON objects; package/numa None when
    unknown): the closest that applies, in the order of docs/topology.md's table."""
    if a["rank"] == b["rank"]:
        return "same_rank"
    if a["node"] != b["node"]:
        return "other_node"
    if a["numa"] is not None and a["numa"] == b["numa"]:
        return "same_numa"
    if a["package"] is not None and a["package"] == b["package"]:
        return "same_package"
    return "same_node"


def traffic_by_class(matrices, placement):
    """Totals and per-source-rank split of every nonzero entry of the given (R, R) byte matrices:
    ({class: {"bytes", "messages"}}, [per rank the same]), as JSON traffic.by_class and
    traffic.by_class_per_rank lay them out."""
    R = len(placement)
    total = {c: {"bytes": 0, "messages": 0} for c in LOCALITIES}
    per_rank = [{c: {"bytes": 0, "messages": 0} for c in LOCALITIES} for _ in range(R)]
    for m in matrices:
        m = np.asarray(m, dtype=np.int64)
        for s in range(R):
            for d in range(R):
                b = int(m[s, d])
                if b > 0:
                    c = locality_of(placement[s], placement[d])
                    for t in (total[c], per_rank[s][c]):
                        t["bytes"] += b
                        t["messages"] += 1
    return total, per_rank


def hier_schedule(m, nodes):
    """The three (R, R) byte matrices of the two-level exchange of m (docs/topology.md): 0, every
    rank sends all its rows to its node's leader (lowest rank); 1, leader to leader, what node a
    sends to node b (a node's own rows stay on the diagonal); 2, each leader to each rank of its
    node what is addressed to it."""
    m = np.asarray(m, dtype=np.int64)
    R = m.shape[0]
    leader = [min(q for q in range(R) if nodes[q] == nodes[r]) for r in range(R)]
    st = [np.zeros((R, R), dtype=np.int64) for _ in range(3)]
    for s in range(R):
        for d in range(R):
            st[0][s, leader[s]] += m[s, d]
            st[1][leader[s], leader[d]] += m[s, d]
            st[2][leader[d], d] += m[s, d]
    return st


def identity_expert_y(seed, N, d, routing):
    """--mode dispatch's y: h + sum over the served assignments of gate * h (float64), for
    generated tokens and a run's routing CSV (read_routing)."""
    h = gen_tokens(seed, N, d).astype(np.float64)
    y = h.copy()
    for t, g, acc in zip(routing["token"], routing["gate"], routing["accepted"]):
        if acc:
            y[t] += float(g) * h[t]
    return y


def write_network(path, name, classes):
    """A network file (docs/projection.md) from {class: (latency_us, bandwidth_GBps)}."""
    lines = ["# written by the tests", "name = %s" % name]
    for c, (lat, bw) in classes.items():
        lines += ["%s.latency_us = %r" % (c, lat), "%s.bandwidth_GBps = %r" % (c, bw)]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def project_stage(m, placement, classes):
    """Seconds for one stage: max over ranks of max(sum of its sends, sum of its receives), a
    message of b bytes in class c costing latency_c + b / bandwidth_c; classes as in
    write_network (microseconds, GB/s)."""
    m = np.asarray(m, dtype=np.int64)
    R = m.shape[0]

    def cost(s, d):
        lat, bw = classes[locality_of(placement[s], placement[d])]
        return lat * 1e-6 + int(m[s, d]) / (bw * 1e9)

    worst = 0.0
    for r in range(R):
        send = sum(cost(r, o) for o in range(R) if m[r, o] > 0)
        recv = sum(cost(o, r) for o in range(R) if m[o, r] > 0)
        worst = max(worst, send, recv)
    return worst


# ---------------------------------------------------------------------------------------------
# --workload (issue 12): routing defined by the workload, from docs/workloads.md

WORKLOAD_STREAM = 8


def wl_hot_set(kind, E, n_hot, period, seed, step):
    """The hot set of a step, as a sorted list of expert ids."""
    if kind in ("hot-experts", "burst"):
        if kind == "burst" and step % period != period - 1:
            return []
        keys = u64(seed, WORKLOAD_STREAM, np.arange(E, dtype=np.uint64) + np.uint64(1 << 62))
        return sorted(np.argsort(keys, kind="stable")[:n_hot].tolist())
    if kind == "hot-rank":
        return list(range(n_hot))
    if kind == "spread-hot":
        return [j * E // n_hot for j in range(n_hot)]
    if kind == "rotating-hotspot":
        origin = n_hot * (step // period) % E
        return sorted((origin + i) % E for i in range(n_hot))
    return []


def wl_route(kind, N, E, k, seed, step, n_hot=0, share=0.5, period=1, zero_first=None):
    """expert (N, k) and gate (N, k) float32 of the step's batch: per slot three uniforms of
    (seed, 8, 3 ((step N + g) k + c) + j); a hot expert while one is left and (no cold one is or
    u0 < share), else a cold one, the floor(u1 |S|)-th left in id order; gates u2 over their sum,
    best first, ties to the lower id."""
    limit = E if zero_first is None else zero_first
    hot = set(wl_hot_set(kind, E, n_hot, period, seed, step))
    ctr = np.arange(N * k * 3, dtype=np.uint64) + np.uint64(3 * step * N * k)
    u = uniform(u64(seed, WORKLOAD_STREAM, ctr)).reshape(N, k, 3)
    expert = np.zeros((N, k), dtype=np.int64)
    gate = np.zeros((N, k), dtype=np.float32)
    for g in range(N):
        used, ch, wt = set(), [], []
        for c in range(k):
            u0, u1, u2 = u[g, c]
            hot_left = [e for e in range(limit) if e in hot and e not in used]
            cold_left = [e for e in range(limit) if e not in hot and e not in used]
            pool = hot_left if hot_left and (not cold_left or u0 < share) else cold_left
            j = min(int(u1 * len(pool)), len(pool) - 1)
            used.add(pool[j])
            ch.append(pool[j])
            wt.append(float(u2))
        order = sorted(range(k), key=lambda c: (-wt[c], ch[c]))
        total = sum(wt)
        expert[g] = [ch[c] for c in order]
        gate[g] = [np.float32(wt[c] / total) for c in order]
    return expert, gate


# ---------------------------------------------------------------------------------------------
# Training (--mode fwd-bwd, train; docs/training.md)

TEACHER_ID = 131072  # the teacher's expert e is the generated expert of id TEACHER_ID + e
TEACHER_STREAM = 9


def gen_teacher(seed, E, d, f):
    """The teacher: its router (E, d), normal / sqrt(d) from stream 9, and its E experts."""
    Wt = fill_normal(seed, TEACHER_STREAM, 0, E * d, 1.0 / math.sqrt(d)).reshape(E, d)
    return Wt, [gen_expert(seed, TEACHER_ID + e, d, f) for e in range(E)]


def teacher_target(h, Wt, texperts):
    """y* = h + T_e*(h), e* = argmax of h Wt^T (ties: the lower id), float64."""
    h64 = h.astype(np.float64)
    best = np.argmax(h64 @ Wt.astype(np.float64).T, axis=1)
    y = h64.copy()
    for e in np.unique(best):
        rows = np.nonzero(best == e)[0]
        w1, w2 = (w.astype(np.float64) for w in texperts[e])
        y[rows] += gelu(h64[rows] @ w1.T) @ w2.T
    return y


def backward_reference(ref, target, alpha=0.0, beta=0.0, logit_bias=None):
    """The backward of one step of a solved Reference (token choice) against the target y*, all in
    float64: the task loss (MSE), the weighted aux loss (alpha E sum f_i P_i, f_i = routed_i /
    (N k)) and z-loss (beta mean lse(z)^2), and the gradients' 2-norms: router dL/dW, the
    experts' dL/dW1 and dL/dW2 together, and the layer input's dL/dh (the residual, the experts'
    input gradients and the router's). Dropped assignments get no gradient. Returns a dict."""
    N, d = ref.h.shape
    E, k = ref.E, ref.k
    h64 = ref.h.astype(np.float64)
    y = ref.output()
    r = y - target
    task = float((r * r).sum() / (N * d))
    gy = 2.0 * r / (N * d)
    dh = gy.copy()
    dgate = np.zeros((N, k))
    exp_sq = 0.0
    for e in range(E):
        tok, ch = np.nonzero((ref.serve_expert == e) & (ref.accepted == 1))
        if tok.size == 0:
            continue
        w = ref.experts_w(e) if callable(ref.experts_w) else ref.experts_w[e]
        w1, w2 = (x.astype(np.float64) for x in w)
        x = h64[tok]
        pre = x @ w1.T
        act = gelu(pre)
        o = act @ w2.T
        dgate[tok, ch] = (gy[tok] * o).sum(axis=1)
        dout = ref.gate[tok, ch][:, None] * gy[tok]
        dw2 = dout.T @ act
        dpre = (dout @ w2) * gelu_grad(pre)
        dw1 = dpre.T @ x
        exp_sq += float((dw1 * dw1).sum() + (dw2 * dw2).sum())
        np.add.at(dh, tok, dpre @ w1)
    p = ref.p
    sel = ref.expert
    rows = np.arange(N)[:, None]
    ds = np.zeros((N, E))
    chosen = p[rows, sel]
    if ref.renormalize or ref.score == "sigmoid":
        T = chosen.sum(axis=1, keepdims=True)
        dot = (dgate * chosen).sum(axis=1, keepdims=True)
        g = np.divide(dgate, T, out=np.zeros_like(dgate), where=T > 0) - \
            np.divide(dot, T * T, out=np.zeros_like(dot), where=T > 0)
        np.add.at(ds, (np.repeat(np.arange(N), k), sel.ravel()), (ref.topk_scale * g).ravel())
    else:
        np.add.at(ds, (np.repeat(np.arange(N), k), sel.ravel()), (ref.topk_scale * dgate).ravel())
    f = np.bincount(sel.ravel(), minlength=E) / float(N * k)
    prob = p if ref.score != "sigmoid" else p / p.sum(axis=1, keepdims=True)
    aux = alpha * E * float((f * prob.mean(axis=0)).sum())
    coef = alpha * E * f / N
    if ref.score == "sigmoid":
        S = p.sum(axis=1, keepdims=True)
        ds += (coef[None, :] - (coef[None, :] * prob).sum(axis=1, keepdims=True)) / S
        dz = ds * p * (1.0 - p)
    else:
        ds += coef[None, :]
        dz = p * (ds - (p * ds).sum(axis=1, keepdims=True))
    z = h64 @ ref.W.astype(np.float64).T
    if logit_bias is not None:
        z = z + np.asarray(logit_bias, dtype=np.float64)
    mx = z.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.exp(z - mx).sum(axis=1, keepdims=True)))
    zl = beta * float((lse * lse).mean())
    dz += (beta / N) * 2.0 * lse * np.exp(z - lse)
    dW = dz.T @ h64
    dh += dz @ ref.W.astype(np.float64)
    return {"task_loss": task, "aux_loss": aux, "z_loss": zl,
            "router": float(np.sqrt((dW * dW).sum())), "experts": math.sqrt(exp_sq),
            "input": float(np.sqrt((dh * dh).sum()))}
