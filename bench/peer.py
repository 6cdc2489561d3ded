#!/usr/bin/env python3
"""mpi4py + NumPy peer of moesim's expert-parallel MoE layer step, timed phase by phase.

Each MPI rank holds a contiguous block of tokens and a contiguous block of experts, and runs the
same step as moesim's C code: router (softmax, top-k), counts (capacity with local scope, drop by
position, per-expert counts exchanged with Alltoall), pack, dispatch (Alltoallv), regroup, expert
FFN (W1, GELU, W2), regroup back, combine (Alltoallv back) and unpack (gate-weighted sum plus the
residual). Per phase it reports the slowest rank's median over the timed steps, so a benchmark can
set moesim's per-phase times against a competent plain-Python implementation.

Run: mpirun -n R python3 bench/peer.py [--tokens N --hidden D --experts E --top-k K ...
--json PATH] (see --help); one OpenBLAS thread per rank unless OPENBLAS_NUM_THREADS says
otherwise, as in moesim. As root, Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS

import argparse
import json
import math
import sys

import mpi4py
import numpy as np
from mpi4py import MPI

PHASES = ("router", "counts", "pack", "dispatch", "regroup", "expert", "combine", "unpack")
EXPERT = PHASES.index("expert")
ROUTER_KEY = 0x726F75746572  # "router": the router's stream, from the seed alone, apart from h's
GELU_A = np.float32(math.sqrt(2.0 / math.pi))
GELU_AB = np.float32(math.sqrt(2.0 / math.pi) * 0.044715)


def parse_args(argv, rank, ranks):
    class Parser(argparse.ArgumentParser):
        def _print_message(self, message, file=None):
            if rank == 0:  # one copy of --help and of errors, not one per rank
                super()._print_message(message, file)

        def error(self, message):
            self._print_message(f"{self.prog}: error: {message} (see --help)\n", sys.stderr)
            sys.exit(2)

    def number(kind, least):
        def parse(text):
            value = kind(text)  # argparse reports a ValueError as "invalid int value: 'x'"
            if not (math.isfinite(value) and value >= least):
                raise argparse.ArgumentTypeError(f"must be at least {least}, got {text}")
            return value
        parse.__name__ = kind.__name__
        return parse

    whole, count = number(int, 1), number(int, 0)
    p = Parser(prog="peer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=whole, default=8192, metavar="N", help="global batch (8192)")
    p.add_argument("--hidden", type=whole, default=512, metavar="D", help="hidden size (512)")
    p.add_argument("--ffn", type=whole, metavar="F", help="expert FFN size (2*D)")
    p.add_argument("--experts", type=whole, default=8, metavar="E", help="experts (8)")
    p.add_argument("--top-k", type=whole, default=2, metavar="K", help="experts per token (2)")
    p.add_argument("--capacity-factor", type=number(float, 0.0), default=1.25, metavar="CF",
                   help="ceil(CF n K / E) slots per expert per rank of n tokens; 0: none dropped "
                   "(1.25)")
    p.add_argument("--warmup", type=count, default=3, metavar="W", help="untimed steps (3)")
    p.add_argument("--iters", type=whole, default=20, metavar="I", help="timed steps (20)")
    p.add_argument("--seed", type=count, default=1, metavar="S", help="data seed (1)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a = p.parse_args(argv)
    a.ffn = a.ffn or 2 * a.hidden
    if a.top_k > a.experts:
        p.error(f"--top-k {a.top_k} exceeds --experts {a.experts}")
    if a.tokens % ranks:
        p.error(f"{ranks} ranks do not divide --tokens {a.tokens}")
    if a.experts < ranks or a.experts % ranks:
        p.error(f"{ranks} ranks need --experts a multiple of {ranks}, got {a.experts}")
    return a


def capacity(cf, n, k, E):
    """Slots per expert for one rank's n tokens; a product within 16 ulps of an integer is it."""
    if cf == 0:
        return n  # no capacity: an expert gets at most one assignment per token
    slots = cf * n * k / E
    nearest = round(slots)
    close = abs(slots - nearest) <= 16 * sys.float_info.epsilon * slots
    return nearest if close else math.ceil(slots)


def make_data(a, rank, ranks):
    """This rank's tokens h and local experts' W1, W2 from seed + rank; the router W from seed."""
    n, d, f, L = a.tokens // ranks, a.hidden, a.ffn, a.experts // ranks
    rng = np.random.default_rng(a.seed + rank)
    h = rng.standard_normal((n, d), dtype=np.float32) * np.float32(d ** -0.5)
    W1, W2 = np.empty((L, f, d), np.float32), np.empty((L, d, f), np.float32)
    for e in range(L):
        W1[e] = rng.standard_normal((f, d), dtype=np.float32) * np.float32(d ** -0.5)
        W2[e] = rng.standard_normal((d, f), dtype=np.float32) * np.float32(f ** -0.5)
    router = np.random.default_rng([a.seed, ROUTER_KEY])
    W = router.standard_normal((a.experts, d), dtype=np.float32) * np.float32(d ** -0.5)
    return h, W, W1, W2


def gelu_(a, tmp):
    """GELU of a in place, tmp as scratch. The tanh approximation: NumPy has no vectorised erf
    (moesim's C uses the erf form; the two differ by under 5e-4)."""
    np.multiply(a, a, out=tmp)
    tmp *= GELU_AB
    tmp += GELU_A
    tmp *= a  # sqrt(2/pi) (a + 0.044715 a^3)
    np.tanh(tmp, out=tmp)
    tmp += 1
    tmp *= 0.5
    a *= tmp


class Layer:
    def __init__(self, comm, a, h, W, W1, W2):
        self.comm, self.R = comm, comm.Get_size()
        self.h, self.W, self.W1, self.W2 = h, W, W1, W2
        (n, d), k, self.E, L = h.shape, a.top_k, a.experts, W1.shape[0]
        self.k, self.L, self.C = k, L, capacity(a.capacity_factor, n, k, self.E)
        slots = min(n, self.C)  # rows one expert takes from one source
        rows_out = min(n * k, self.E * slots)  # kept rows this rank can send
        rows_in = self.R * min(n * min(k, L), L * slots)  # rows it can receive
        buf = lambda rows, cols: np.empty((rows, cols), np.float32)  # noqa: E731
        # send and recv serve the combine too, the other way round
        self.send, self.recv = buf(rows_out, d), buf(rows_in, d)
        self.x, self.out = buf(rows_in, d), buf(rows_in, d)  # expert-major rows in and out
        self.z, self.y = buf(n * k, d), buf(n, d)  # returns in (token, choice) order; output
        self.act, self.tmp = buf(self.R * slots, a.ffn), buf(self.R * slots, a.ffn)
        self.cnt_send = np.empty((self.R, L), np.int64)  # [owner, its local expert]
        self.cnt_recv = np.empty((self.R, L), np.int64)  # [source, my local expert]

    def lap(self, phase, sync=False):
        """Charge the time since the last lap to phase; then, with sync, an untimed Barrier."""
        now = MPI.Wtime()
        self.spent[phase] += now - self.mark
        if sync:
            self.comm.Barrier()
            now = MPI.Wtime()
        self.mark = now

    def step(self):
        """One layer step; returns the phase times in PHASES order (regroup_back in regroup)."""
        comm, h, k, E, R, L = self.comm, self.h, self.k, self.E, self.R, self.L
        n, d = h.shape
        self.spent, self.mark = dict.fromkeys(PHASES, 0.0), MPI.Wtime()
        # router: softmax over E, top-k by descending probability, ties by lower id
        p = h @ self.W.T
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        top = np.argpartition(-p, k - 1, axis=1)[:, :k]
        top.sort(axis=1)  # lower ids first, so the stable sort below breaks ties by id
        gate = np.take_along_axis(p, top, axis=1)
        order = np.argsort(-gate, axis=1, kind="stable")
        top, gate = np.take_along_axis(top, order, 1), np.take_along_axis(gate, order, 1)
        self.lap("router", sync=True)

        # counts: kept per expert (drop by position keeps the first C), exchanged with the owners
        expert = top.ravel()  # assignments in (token, choice) order
        counts = np.bincount(expert, minlength=E)
        self.cnt_send[...] = np.minimum(counts, self.C).reshape(R, L)
        comm.Alltoall([self.cnt_send, MPI.INT64_T], [self.cnt_recv, MPI.INT64_T])
        self.lap("counts")

        # pack: kept assignments by expert (stable), their rows gathered into the send buffer
        order = np.argsort(expert, kind="stable")
        start = np.cumsum(counts) - counts
        fits = np.arange(n * k) - start[expert[order]] < self.C  # position within its expert
        kept, dropped = order[fits], order[~fits]
        m = kept.size
        # mode="clip" (the indices are in range anyway): with "raise" NumPy buffers out= first
        np.take(h, kept // k, axis=0, out=self.send[:m], mode="clip")
        scount, rcount = self.cnt_send.sum(axis=1), self.cnt_recv.sum(axis=1)
        sdisp, rdisp = np.cumsum(scount) - scount, np.cumsum(rcount) - rcount
        self.lap("pack", sync=True)

        comm.Alltoallv([self.send, (scount * d, sdisp * d), MPI.FLOAT],
                       [self.recv, (rcount * d, rdisp * d), MPI.FLOAT])
        self.lap("dispatch")

        # regroup: arrival order (source-major) -> expert-major (each expert's rows, by source)
        rc = self.cnt_recv  # [source, local expert]
        src = rc.cumsum() - rc.ravel()
        dst = (rc.T.cumsum() - rc.T.ravel()).reshape(L, R).T.ravel()
        blocks = list(zip(src.tolist(), dst.tolist(), rc.ravel().tolist()))
        bounds = [0] + rc.sum(axis=0).cumsum().tolist()
        for s0, d0, c in blocks:
            self.x[d0:d0 + c] = self.recv[s0:s0 + c]
        self.lap("regroup")

        for e in range(L):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                act = np.matmul(self.x[lo:hi], self.W1[e].T, out=self.act[:hi - lo])
                gelu_(act, self.tmp[:hi - lo])
                np.matmul(act, self.W2[e].T, out=self.out[lo:hi])
        self.lap("expert")

        for s0, d0, c in blocks:  # regroup back: expert-major -> arrival order
            self.recv[s0:s0 + c] = self.out[d0:d0 + c]
        self.lap("regroup", sync=True)

        comm.Alltoallv([self.recv, (rcount * d, rdisp * d), MPI.FLOAT],
                       [self.send, (scount * d, sdisp * d), MPI.FLOAT])
        self.lap("combine")

        # unpack: returned rows back into (token, choice) order, dropped ones zero, then
        # y = h + the gate-weighted sum over each token's k choices
        z = self.z
        z[kept] = self.send[:m]
        z[dropped] = 0
        z3 = z.reshape(n, k, d)
        z3 *= gate[:, :, None]
        np.sum(z3, axis=1, out=self.y)
        self.y += h
        self.lap("unpack")

        self.sent, self.received, self.dropped = m, int(rcount.sum()), n * k - m
        return list(self.spent.values())


def main(argv=None):
    comm = MPI.COMM_WORLD
    rank, R = comm.Get_rank(), comm.Get_size()
    a = parse_args(argv, rank, R)
    layer = Layer(comm, a, *make_data(a, rank, R))
    for _ in range(a.warmup):
        layer.step()
    comm.Barrier()
    times = np.array([layer.step() for _ in range(a.iters)])  # [iteration, phase]
    total = times.sum(axis=1)
    mine = np.concatenate([np.median(times, axis=0),
                           [np.median(total - times[:, EXPERT]), np.median(total)]])
    worst = np.empty_like(mine)
    comm.Allreduce(mine, worst, op=MPI.MAX)  # the slowest rank sets each time

    if not np.isfinite(layer.y).all():
        print(f"peer.py: warning: rank {rank}: y has non-finite values", file=sys.stderr)
    tally = np.array([layer.sent, layer.received, layer.dropped], np.int64)
    comm.Allreduce(MPI.IN_PLACE, tally, op=MPI.SUM)
    sent, received, dropped = (int(v) for v in tally)
    if rank != 0:
        return 0
    if sent != received:
        print(f"peer.py: warning: {sent} rows sent but {received} received", file=sys.stderr)

    n, L = a.tokens // R, a.experts // R
    keys = "tokens hidden ffn experts top_k capacity_factor iters warmup seed".split()
    result = {"config": {"ranks": R, **{key: getattr(a, key) for key in keys}},
              "phases": dict(zip(PHASES, worst[:len(PHASES)].tolist())),
              "non_gemm_s": float(worst[-2]), "step_s": float(worst[-1]),
              "dropped_assignments": dropped, "numpy": np.__version__,
              "mpi4py": mpi4py.__version__}
    if not a.quiet:
        slots = "no capacity" if a.capacity_factor == 0 else f"{layer.C} slots/expert/rank"
        print(f"peer (mpi4py {mpi4py.__version__}, NumPy {np.__version__}): ranks {R}, tokens "
              f"{a.tokens} ({n}/rank), hidden {a.hidden}, ffn {a.ffn}, experts {a.experts} "
              f"({L}/rank), top-k {a.top_k}, capacity factor {a.capacity_factor:g} ({slots}), "
              f"iters {a.iters}, warmup {a.warmup}, seed {a.seed}")
        print(f"{'phase':<12}{'ms':>10}")
        for name, sec in [*zip(PHASES, worst), ("non-GEMM", worst[-2]), ("step", worst[-1])]:
            print(f"{name:<12}{sec * 1e3:>10.3f}")
        print(f"dropped assignments: {dropped} of {a.tokens * a.top_k}")
    if a.json:
        try:
            with open(a.json, "w") as fh:
                fh.write(json.dumps(result, indent=2) + "\n")
        except OSError as err:
            print(f"peer.py: cannot write {a.json}: {err.strerror}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
