"""Every command of docs/lessons.md and docs/studies.md works.

Each `$ ` line inside a ```sh block of those files (a trailing backslash continues it on the next
line) is run with bash, in order, in one temporary directory per file (so a later lesson may read
a file an earlier one wrote, as lesson 12 reads lesson 3's CSV), with `launch/` and `build/` at the
start of a word pointing at this checkout's scripts and at the moesim under test. Checked:
  - docs/lessons.md has fourteen lessons (`## 1.` … `## 14.`), docs/studies.md three studies
    (`## 1.` … `## 3.`), each with at least one command;
  - every command exits 0 (their numbers need not match the document's: the times are this
    machine's, and a different BLAS may round differently);
  - every figure the documents link (`![...](figures/NAME)`) exists in docs/figures/ and is a PNG;
  - nothing is written outside the temporary directory (the commands' relative paths land there).
MOESIM_TEST_DOC=lessons.md (or studies.md) checks that document only: meson registers one test
for each, so the two run side by side.
"""

import os
import re
import shutil
import subprocess
import tempfile

import launchtest as lt


def commands(text):
    """The `$ ` lines of the ```sh blocks, continuation lines joined."""
    out, inside, cur = [], False, None
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
            continue
        if not inside:
            continue
        if cur is not None:
            cur += "\n" + line
            if not line.endswith("\\"):
                out.append(cur)
                cur = None
            continue
        if line.startswith("$ "):
            cmd = line[2:]
            if cmd.endswith("\\"):
                cur = cmd
            else:
                out.append(cmd)
    return out


def localize(cmd, launch, build):
    """launch/X and build/X at the start of a word: this checkout's."""
    cmd = re.sub(r"(?<![\w/.-])launch/", launch + "/", cmd)
    return re.sub(r"(?<![\w/.-])build/", build + "/", cmd)


def main():
    moesim, launch = lt.paths()
    ck = lt.Checks()
    root = os.path.dirname(launch)
    build = os.path.dirname(moesim)
    env = lt.clean_env(MOESIM=moesim)
    docs = (("lessons.md", 14, r"^## (\d+)\. "), ("studies.md", 3, r"^## (\d+)\. "))
    only = os.environ.get("MOESIM_TEST_DOC")
    if only:
        docs = tuple(x for x in docs if x[0] == only)
        ck.check(len(docs) == 1, "MOESIM_TEST_DOC=%s names one of the documents" % only)
    for name, count, heading in docs:
        path = os.path.join(root, "docs", name)
        if not os.path.exists(path):
            ck.check(False, "%s exists" % name)
            continue
        with open(path) as fh:
            text = fh.read()
        nums = [int(m.group(1)) for m in re.finditer(heading, text, re.M)]
        ck.check(nums == list(range(1, count + 1)),
                 "%s: %d numbered sections, in order" % (name, count), str(nums))
        # every section has a command
        parts = re.split(heading, text, flags=re.M)
        for i in range(1, len(parts) - 1, 2):
            ck.check(len(commands(parts[i + 1])) > 0,
                     "%s: section %s has a command" % (name, parts[i]))
        for fig in re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text):
            fpath = os.path.join(root, "docs", fig)
            ok = os.path.exists(fpath)
            if ok and fig.endswith(".png"):
                with open(fpath, "rb") as fh:
                    ok = fh.read(8) == b"\x89PNG\r\n\x1a\n"
            ck.check(ok, "%s: figure %s exists" % (name, fig))
        work = tempfile.mkdtemp(prefix="moesim-lessons-")
        try:
            for cmd in commands(text):
                real = localize(cmd, launch, build)
                lt.say("%s: %s" % (name, cmd[:90]))
                try:
                    p = subprocess.run(["bash", "-c", "set -o pipefail; " + real], cwd=work,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, timeout=240)
                    ok = p.returncode == 0
                    why = "exit %d\nstdout tail:\n%s\nstderr tail:\n%s" % (
                        p.returncode, p.stdout[-1500:], p.stderr[-1500:])
                except subprocess.TimeoutExpired:
                    ok, why = False, "timed out"
                ck.check(ok, "%s: `%s` works" % (name, cmd), why)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    ck.done(os.path.splitext(only)[0] if only else "lessons")


if __name__ == "__main__":
    main()
