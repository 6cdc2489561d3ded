"""launch/moesim-quiz: predict, then reveal.

Checks: the default batch drops something at cf 1.0 (seed 1); --answer equal to the truth (taken
from a direct moesim run's ablation[].dropped_assignments) scores 2/2, one wrong cf 1/2, both
wrong 0/2, the last line being `score: S/2`; --json is valid JSON whose truth.dropped_assignments
equals the direct run's drops and whose batch describes the run; --seed 2 is another batch;
answers piped on stdin (a total and a per-expert list) are read and scored; end of input without
--answer exits 2 with a hint; a malformed --answer (x,y or one number) exits 2 with one error
line; the script is shellcheck-clean when shellcheck is installed.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launchtest as lt  # noqa: E402

moesim, launch = lt.paths()
quiz = os.path.join(launch, "moesim-quiz")
table = os.path.join(os.path.dirname(moesim), "moesim-table")
if not os.access(quiz, os.X_OK):
    print("FAIL: no executable %s" % quiz)
    sys.exit(1)
tmp = tempfile.mkdtemp(prefix="moesim-quiz-test-")
env = lt.clean_env(MOESIM=moesim, MOESIM_TABLE=table, TMPDIR=tmp)
ck = lt.Checks()


def last_line(r):
    lines = r.stdout.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def quiz_run(*args, stdin=None):
    cmd = [quiz, *args]
    if stdin is None:
        return lt.run(cmd, env=env, cwd=tmp, timeout=60)
    start = lt.time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=tmp, input=stdin, capture_output=True, text=True,
                          timeout=60)
    return lt.Run(cmd, proc, lt.time.monotonic() - start)


try:
    # the truth, independently: a direct moesim run on the quiz's default batch
    direct = os.path.join(tmp, "direct.json")
    r = lt.run([launch + "/moesim-local", "-n", "2", "--moesim", moesim, "--",
                "--tokens", "16", "--experts", "4", "--top-k", "2", "--seed", "1",
                "--capacity-factor", "1.0,1.25", "--json", direct, "--quiet"], env=env, cwd=tmp)
    if not ck.check(r.returncode == 0, "direct moesim run", r.describe()):
        ck.done("quiz")
    with open(direct) as f:
        d = json.load(f)
    truth = [a["dropped_assignments"] for a in d["ablation"]]
    caps = [a["capacity"] for a in d["ablation"]]
    lt.say("direct run: dropped %s, capacity %s" % (truth, caps))
    ck.check(truth[0] > 0, "the default batch drops something at cf 1.0 (seed 1)", str(truth))

    lt.say("--answer right, half right, wrong")
    qj = os.path.join(tmp, "quiz.json")
    r = quiz_run("--answer", "%d,%d" % tuple(truth), "--json", qj)
    ck.check(r.returncode == 0 and last_line(r) == "score: 2/2", "right answer scores 2/2",
             r.describe())
    ck.check(r.stderr == "", "quiet stderr when not a terminal", r.stderr)
    width = max((len(x) for x in r.stdout.splitlines()), default=0)
    ck.check(width <= 100, "output within 100 columns (widest %d)" % width)
    ck.check(r.stdout.count("t15->e3") >= 1 or "overflowed" in r.stdout, "reveal lists overflows")
    r = quiz_run("--answer", "%d,%d" % (truth[0] + 1, truth[1]))
    ck.check(r.returncode == 0 and last_line(r) == "score: 1/2", "one wrong cf scores 1/2",
             r.describe())
    r = quiz_run("--answer", "%d,%d" % (truth[0] + 1, truth[1] + 2))
    ck.check(r.returncode == 0 and last_line(r) == "score: 0/2", "both wrong scores 0/2",
             r.describe())

    lt.say("--json")
    try:
        with open(qj) as f:
            q = json.load(f)
    except (OSError, ValueError) as exc:
        q = None
        ck.check(False, "--json is valid JSON", str(exc))
    if q is not None:
        b = q["batch"]
        ck.check(q["truth"]["dropped_assignments"] == truth,
                 "truth.dropped_assignments equals the direct run's ablation drops",
                 "%s vs %s" % (q["truth"]["dropped_assignments"], truth))
        ck.check(b["capacity"] == caps, "batch.capacity equals ablation[].capacity")
        ck.check((b["tokens"], b["experts"], b["top_k"], b["ranks"], b["seed"]) ==
                 (16, 4, 2, 2, 1), "batch describes the defaults", str(b))
        ck.check(b["capacity_factors"] == [1.0, 1.25], "batch.capacity_factors")
        ck.check(len(b["tokens_topk"]) == 16 and all(len(t) == 2 for t in b["tokens_topk"]),
                 "tokens_topk is 16 x 2")
        ck.check(q["answer"] == truth and q["score"] == 2, "answer and score in the JSON")
        pe = q["truth"]["per_expert"]
        ck.check([sum(x) for x in pe] == truth, "per_expert sums to the totals", str(pe))
        ck.check(pe[0] == [e["dropped"] for e in d["experts"]],
                 "per_expert at cf 1.0 equals the direct run's experts[].dropped")

    lt.say("--seed 2")
    q2j = os.path.join(tmp, "quiz2.json")
    r = quiz_run("--seed", "2", "--answer", "0,0", "--json", q2j)
    ck.check(r.returncode == 0 and last_line(r).startswith("score: "), "--seed 2 runs",
             r.describe())
    if q is not None and os.path.exists(q2j):
        with open(q2j) as f:
            q2 = json.load(f)
        ck.check(q2["batch"]["tokens_topk"] != q["batch"]["tokens_topk"] and
                 q2["batch"]["seed"] == 2, "--seed 2 is another batch")

    lt.say("piped answers")
    r = quiz_run(stdin="%d\n%d\n" % tuple(truth))
    ck.check(r.returncode == 0 and last_line(r) == "score: 2/2", "piped totals score 2/2",
             r.describe())
    per = ",".join(str(x) for x in q["truth"]["per_expert"][1]) if q else "0,0,0,0"
    r = quiz_run(stdin="%d\n%s\n" % (truth[0] + 1, per))
    ck.check(r.returncode == 0 and last_line(r) == "score: 1/2",
             "piped wrong total and right per-expert list score 1/2", r.describe())

    lt.say("errors")
    r = quiz_run()  # stdin is /dev/null
    ck.check(r.returncode == 2 and "--answer" in r.stderr, "end of input exits 2 with a hint",
             r.describe())
    for bad in ("x,y", "3", "1,2,3", "-1,2"):
        r = quiz_run("--answer", bad)
        lines = r.stderr.strip().splitlines()
        ck.check(r.returncode == 2 and len(lines) == 1 and
                 lines[0].startswith("moesim-quiz: error: "),
                 "--answer %s exits 2 with one error line" % bad, r.describe())
    r = quiz_run("--bogus")
    ck.check(r.returncode == 2, "an unknown option exits 2", r.describe())
    r = quiz_run("--help")
    ck.check(r.returncode == 0 and "--answer" in r.stdout, "--help")
    if shutil.which("shellcheck"):
        r = lt.run(["shellcheck", quiz], env=env)
        ck.check(r.returncode == 0, "shellcheck-clean", r.stdout)
    ck.check(sorted(os.listdir(tmp)) == ["direct.json", "quiz.json", "quiz2.json"],
             "no temporary left behind", str(os.listdir(tmp)))
finally:
    shutil.rmtree(tmp, ignore_errors=True)
ck.done("quiz")
