"""The documentation runs: every ```python block of the guide, the format guide and
the lowering walk-through is executed, and every printout marked as its output is
compared with what the block prints today.

Conventions in the Markdown files listed in ``DOCS``:

* A ```python fenced block is run in a fresh namespace (so each block imports what
  it uses and can be copied into a session on its own), with ``SPCOMP_CACHE_DIR``
  pointing at a temporary directory of its own, that directory as the working
  directory, spcomp's in-memory kernel cache emptied, and the thread count and the
  environment restored afterwards. All blocks run in one child process started with
  ``PYTHONHASHSEED=0`` (see :func:`run_blocks`), which keeps the suite to one LLVM
  start-up and a few seconds.
* ``<!-- skip -->`` on the line right before a ```python fence: the block is shown,
  not run. Use it sparingly (code that needs a GPU, a download, the reader's files).
* ``<!-- output -->`` on the line right before a fenced block that follows a python
  block (blank lines allowed in between): that block is the exact standard output
  of the python block above it, compared line by line (trailing spaces ignored).
  Only mark printouts that do not depend on the machine (no timings, no thread
  counts, no addresses).

After a deliberate change of behaviour, refresh the marked printouts with::

    python tests/test_docs.py --update        # rewrites the <!-- output --> blocks
    python tests/test_docs.py --update docs/cuda.md   # any page (cuda.md needs g++ and nvcc)

and read the diff before committing it: the prose around a printout may need the
same change.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/guide.md", "docs/formats.md", "docs/lowering-example.md", "docs/autodiff.md")
# every doc this suite owns: their relative links must point at files that exist
LINKED = DOCS + ("docs/architecture.md", "docs/cuda.md", "docs/torch.md")
# documents other engineers write; a link to them is fine before they exist
OTHERS = ("docs/performance.md", "docs/ffn.md")

SKIP = "<!-- skip -->"
OUTPUT = "<!-- output -->"
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*$")


@dataclass
class Block:
    path: str            # relative to the repository root
    line: int            # 1-based line of the opening fence
    code: str
    skip: bool
    expected: str | None  # the marked printout, if any
    out_start: int = 0   # 0-based line index of the printout's first line
    out_end: int = 0     # 0-based index of its closing fence

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def _fenced(lines: list, start: int):
    """(language, body lines, index of the closing fence) of the fence at ``start``."""
    m = FENCE.match(lines[start])
    ticks, lang = m.group(2), m.group(3)
    for k in range(start + 1, len(lines)):
        m2 = FENCE.match(lines[k])
        if m2 and m2.group(2) == ticks and not m2.group(3):
            return lang, lines[start + 1:k], k
    raise ValueError(f"unclosed code fence at line {start + 1}")


def parse(path: str) -> list:
    """The python blocks of one Markdown file, with their markers and printouts."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    blocks = []
    k = 0
    while k < len(lines):
        if not FENCE.match(lines[k]):
            k += 1
            continue
        lang, body, end = _fenced(lines, k)
        if lang != "python":
            k = end + 1
            continue
        before = k - 1
        skip = before >= 0 and lines[before].strip() == SKIP
        block = Block(path, k + 1, "\n".join(body) + "\n", skip, None)
        j = end + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].strip() == OUTPUT:
            j += 1
            if j >= len(lines) or not FENCE.match(lines[j]):
                raise ValueError(f"{path}:{j + 1}: {OUTPUT} must be followed by a fenced block")
            _, out, out_end = _fenced(lines, j)
            block.expected = "\n".join(out)
            block.out_start, block.out_end = j + 1, out_end
            k = out_end + 1
        else:
            k = end + 1
        blocks.append(block)
    return blocks


def all_blocks() -> list:
    out = []
    for path in DOCS:
        if (ROOT / path).exists():
            out += parse(path)
    return out


def _normal(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines())


def run_block(block: Block, workdir: Path) -> str:
    """Run one block the way the test does; return what it printed."""
    import spcomp
    from spcomp.runtime import threads

    env = dict(os.environ)
    cwd = os.getcwd()
    nthreads = threads.get_num_threads()
    (workdir / "cache").mkdir(parents=True, exist_ok=True)
    os.environ["SPCOMP_CACHE_DIR"] = str(workdir / "cache")
    os.chdir(workdir)
    spcomp.clear_cache()
    out = io.StringIO()
    try:
        code = compile(block.code, block.id, "exec")
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("default")
            exec(code, {"__name__": "__docs__"})
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        threads.set_num_threads(nthreads)
        spcomp.clear_cache()
    return out.getvalue()


BLOCKS = all_blocks()


def run_blocks(paths, workdir: Path) -> dict:
    """Run every non-skipped block of ``paths`` in one child process; ``{block id: (printed, error)}``.

    The child runs with ``PYTHONHASHSEED=0``: the lowerer iterates a set of accesses
    when it emits locates, so the order of some lines of generated code depends on
    string hashing (see docs/lowering-example.md); a fixed seed keeps the printouts
    comparable. Each block still gets a fresh namespace and its own cache directory.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # SPCOMP_VECTOR_GATHERS: SpMV's loop hint depends on the CPU (backends/cpu/jit.py);
    # the printed kernels show the one a CPU with fast gathers gets
    env = dict(os.environ, PYTHONHASHSEED="0", SPCOMP_CACHE_DIR=str(workdir / "cache"), SPCOMP_VECTOR_GATHERS="1")
    out = workdir / "results.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(workdir), *paths]
    proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the docs worker failed (status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return {k: tuple(v) for k, v in json.loads(out.read_text()).items()}


def _worker(workdir: Path, paths) -> None:
    results = {}
    for n, block in enumerate(b for path in paths for b in parse(path)):
        if block.skip:
            continue
        try:
            results[block.id] = (run_block(block, workdir / f"block{n}"), None)
        except BaseException:  # noqa: B036 - report whatever the block raised
            results[block.id] = ("", traceback.format_exc())
    (workdir / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    """The blocks' results, computed once per test run (shared by pytest-xdist workers)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent           # the directory every worker's base temp lives in
    workdir = root / "docs-blocks"
    with open(root / "docs-blocks.lock", "w") as lock, pytest.MonkeyPatch.context() as mp:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)   # the first worker runs the blocks, the others wait
        except ImportError:  # pragma: no cover - not POSIX: each worker runs them
            workdir = tmp_path_factory.mktemp("docs-blocks")
        done = workdir / "results.json"
        if done.exists():
            return {k: tuple(v) for k, v in json.loads(done.read_text()).items()}
        mp.setenv("SPCOMP_CACHE_DIR", str(workdir / "cache"))
        return run_blocks([p for p in DOCS if (ROOT / p).exists()], workdir)


def test_docs_exist():
    for path in DOCS:
        assert (ROOT / path).exists(), f"{path} is missing"
    assert BLOCKS, "no python blocks found in the docs"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block, results):
    if block.skip:
        pytest.skip("marked <!-- skip -->")
    printed, error = results[block.id]
    assert error is None, f"{block.id} raised:\n{error}"
    if block.expected is not None:
        got, want = _normal(printed), _normal(block.expected)
        assert got == want, (f"{block.id}: the printout in the docs differs from what the block prints now; "
                             f"if the change is intended run `python tests/test_docs.py --update`\n"
                             f"--- docs\n{want}\n--- now\n{got}")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", LINKED)
def test_relative_links_resolve(path):
    doc = ROOT / path
    if not doc.exists():
        pytest.skip(f"{path} not written")
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (doc.parent / target).resolve()
        rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
        assert resolved.exists() or rel in OTHERS, f"{path}: link to {target} does not resolve"


def test_guide_names_every_error():
    """The guide's error section names every exception and warning spcomp.errors defines."""
    import spcomp.errors as errors
    text = (ROOT / "docs/guide.md").read_text(encoding="utf-8")
    names = [n for n, v in vars(errors).items()
             if isinstance(v, type) and issubclass(v, (errors.SpcompError, Warning))
             and v.__module__ == errors.__name__]
    section = text.split("## Errors", 1)[-1].split("\n## ", 1)[0]
    missing = [n for n in names if not re.search(rf"\b{n}\b", section)]
    assert not missing, f"docs/guide.md does not document {missing}"


# ------------------------------------------------------------------ --update

def update(paths=DOCS) -> int:
    """Rewrite every <!-- output --> printout with what its block prints now."""
    import tempfile
    changed = 0
    with tempfile.TemporaryDirectory() as tmp:
        results = run_blocks(list(paths), Path(tmp))
    for path in paths:
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        for block in reversed(parse(path)):   # from the end: line numbers stay valid
            if block.expected is None or block.skip:
                continue
            printed, error = results[block.id]
            if error is not None:
                print(f"{block.id} raised, printout left as it was:\n{error}")
                continue
            new = printed.rstrip("\n").splitlines()
            if new != lines[block.out_start:block.out_end]:
                lines[block.out_start:block.out_end] = new
                changed += 1
                print(f"updated {block.id}")
        (ROOT / path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(Path(sys.argv[2]), sys.argv[3:])
    elif "--update" in sys.argv[1:]:
        files = [a for a in sys.argv[1:] if not a.startswith("--")] or list(DOCS)
        print(f"{update(files)} printout(s) changed")
    else:
        sys.exit(pytest.main([__file__, "-q"]))
