"""The command line, ``python -m spcomp``: exit status and messages.

The exit status is a contract with scripts: 0 the kernel matches NumPy, 1 a
numeric mismatch and nothing else, 2 every other failure (usage, compile, run,
an internal error). Each test checks the status *and* that the one-line
``spcomp: ...`` message names the culprit, without a traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import spcomp
from spcomp import cli

ROOT = Path(__file__).resolve().parents[1]
SPMV = ["y[i] = W[i,j] * x[j]", "-f", "W=csr"]
SMALL = ["--size", "20", "--repeat", "1"]


def run(capsys, *argv) -> tuple:
    """(exit status, stdout, stderr) of ``spcomp argv``."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code: int, err: str, *culprits: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("spcomp: "), err
    for c in culprits:
        assert c in err, f"{c!r} not in {err!r}"


# ------------------------------------------------------------- the main job
def test_main_job_prints_the_kernel_and_ok(capsys):
    code, out, err = run(capsys, *SPMV, "--size", 2000, "--repeat", 3)
    assert code == 0, err
    assert "int32_t kernel(" in out
    assert "# operands: W(2000, 2000), x(2000,)" in out
    assert "check against numpy.einsum: OK" in out


def test_subprocess_exit_status_is_the_real_one():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    bad = subprocess.run([sys.executable, "-m", "spcomp", *SPMV, "--size", "0"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "spcomp: --size must be at least 1, got 0"
    ok = subprocess.run([sys.executable, "-m", "spcomp", *SPMV, *SMALL],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout.splitlines()[-1]


def test_help_exits_0_and_documents_every_option(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for option in ("--format", "--dtype", "--size", "--density", "--backend", "--emit", "--repeat", "--seed"):
        assert option in out
    parser = cli.build_parser()
    missing = [a.dest for a in parser._actions if not a.help]  # argparse keeps its actions there
    assert not missing, missing


# ------------------------------------------------------------- number ranges
@pytest.mark.parametrize("value", [0, -3])
def test_size_below_1(capsys, value):
    assert_usage_error(*run(capsys, *SPMV, "--size", value)[::2], "--size", str(value))


def test_size_too_large_states_the_bound(capsys):
    code, _, err = run(capsys, *SPMV, "--size", 10 ** 6, "--repeat", 1)
    assert_usage_error(code, err, "--size 1000000", "W", "2**28")


def test_size_bound_counts_the_order_of_the_largest_tensor(capsys):
    # 1000**3 elements is over the bound although 1000**2 is not
    code, _, err = run(capsys, "C[i,j,k] = A[i,j,k] * B[i,j,k]", "--size", 1000, "--repeat", 1)
    assert_usage_error(code, err, "--size 1000", "3-D", "2**28")


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "inf"])
def test_density_outside_0_1(capsys, value):
    code, _, err = run(capsys, *SPMV, f"--density={value}")
    assert_usage_error(code, err, "--density", "(0, 1]")


def test_density_1_is_allowed(capsys):
    code, out, err = run(capsys, *SPMV, *SMALL, "--density", 1)
    assert code == 0, err


@pytest.mark.parametrize("value", [0, -1])
def test_repeat_below_1(capsys, value):
    code, _, err = run(capsys, *SPMV, "--repeat", value)
    assert_usage_error(code, err, "--repeat", str(value))


def test_negative_seed(capsys):
    code, _, err = run(capsys, *SPMV, "--seed", -1)
    assert_usage_error(code, err, "--seed", "-1")


def test_argparse_errors_return_2(capsys):
    code, _, err = run(capsys, *SPMV, "--size", "ten")
    assert code == 2
    assert "--size" in err and "Traceback" not in err


# ------------------------------------------------------------- -f NAME=FORMAT
def test_format_without_equals(capsys):
    code, _, err = run(capsys, "y[i] = W[i,j] * x[j]", "-f", "W")
    assert_usage_error(code, err, "NAME=FORMAT", "'W'")


def test_format_with_empty_name(capsys):
    code, _, err = run(capsys, "y[i] = W[i,j] * x[j]", "-f", "=csr")
    assert_usage_error(code, err, "'=csr'")


def test_duplicate_format(capsys):
    code, _, err = run(capsys, *SPMV, "-f", "W=coo")
    assert_usage_error(code, err, "'W'", "twice", "csr", "coo")


def test_format_for_an_unknown_tensor_lists_the_tensors(capsys):
    code, _, err = run(capsys, "y[i] = W[i,j] * x[j]", "-f", "Z=csr", "--emit", "notation")
    assert_usage_error(code, err, "'Z'", "y, W, x")


@pytest.mark.parametrize("spelling", ["CSR", "cssr", "Csr"])
def test_misspelt_preset_suggests_csr(capsys, spelling):
    code, _, err = run(capsys, "y[i] = W[i,j] * x[j]", "-f", f"W={spelling}", "--emit", "notation")
    assert_usage_error(code, err, "FormatError", repr(spelling), "did you mean 'csr'?")


def test_format_parse_suggestion_keeps_parameters():
    with pytest.raises(spcomp.errors.FormatError, match=r"did you mean 'twell\(B=8\)'\?"):
        spcomp.Format.parse("TWELL(B=8)", 2)


# ------------------------------------------------------------- --emit and --backend
def test_emit_cuda_needs_a_cuda_backend(capsys):
    code, _, err = run(capsys, *SPMV, "--emit", "cuda")
    assert_usage_error(code, err, "--emit cuda", "--backend cuda", "cuda-sim", "--backend cpu")


@pytest.mark.parametrize("backend", ["cuda", "cuda-sim"])
def test_emit_llvm_needs_the_cpu_backend(capsys, backend):
    code, _, err = run(capsys, *SPMV, "--emit", "llvm", "--backend", backend)
    assert_usage_error(code, err, "--emit llvm", "--backend cpu", f"--backend {backend}")


def test_emit_cuda_with_cuda_sim_prints_the_source(capsys):
    code, out, err = run(capsys, *SPMV, "--emit", "cuda", "--backend", "cuda-sim")
    assert code == 0, err
    assert "__global__" in out


# ------------------------------------------------------------- compile and internal errors
def test_parse_error_exits_2(capsys):
    code, _, err = run(capsys, "y[i] = W[i,j] x[j]")
    assert_usage_error(code, err, "ParseError", "'x'")


def test_internal_error_exits_2_not_1(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(spcomp, "compile", broken)
    code, _, err = run(capsys, *SPMV, *SMALL)
    assert_usage_error(code, err, "internal error", "RuntimeError", "boom")
    assert err.count("\n") == 1  # one line


# ------------------------------------------------------------- the numeric check
def test_log_of_negative_data_is_nan_on_both_sides(capsys):
    code, out, err = run(capsys, "y[i] = log(x[i])", *SMALL)
    assert code == 0, out + err
    assert "OK" in out and "NaN or infinite entries match" in out
    assert "RuntimeWarning" not in err


def test_sqrt_of_negative_data_is_not_a_mismatch(capsys):
    code, out, err = run(capsys, "y[i] = sqrt(x[i])", *SMALL)
    assert code == 0, out + err


def test_compare_nan_and_infinity_rules():
    nan, inf = np.nan, np.inf
    assert cli.compare([nan, inf, -inf, 1.0], [nan, inf, -inf, 1.0], 1e-9).ok
    one_sided = cli.compare([nan, 1.0], [1.0, 1.0], 1e-9)
    assert not one_sided.ok and one_sided.unmatched == 1
    assert not cli.compare([1.0], [nan], 1e-9).ok
    assert not cli.compare([inf], [-inf], 1e-9).ok
    assert not cli.compare([inf], [1.0], 1e-9).ok
    assert not cli.compare([1.0, 2.0], [1.0, 2.5], 1e-9).ok
    assert cli.compare(np.float64(nan), np.float64(nan), 1e-9).ok


def test_mismatch_exits_1(capsys, monkeypatch):
    """Only a wrong number exits 1: here the reference is off by one."""
    # the module, not the function spcomp.testing re-exports under the same name
    reference_module = importlib.import_module("spcomp.testing.reference")
    real = reference_module.reference

    def off_by_one(*args, **kwargs):
        return real(*args, **kwargs) + 1.0
    monkeypatch.setattr(reference_module, "reference", off_by_one)
    code, out, err = run(capsys, *SPMV, *SMALL)
    assert code == 1, err
    assert "MISMATCH" in out


# ------------------------------------------------------------- any numbers: 0 or 2, never a traceback
# Valid sizes and repeats stay small so that each example runs in milliseconds; the
# invalid ones range over all integers, and the large sizes are all over the bound.
SIZES = st.one_of(st.integers(-3, 12), st.integers(max_value=0), st.integers(min_value=2 ** 14 + 1))
REPEATS = st.one_of(st.integers(-2, 2), st.integers(max_value=0))


def _valid(size: int, density: float, repeat: int, seed: int) -> bool:
    return 1 <= size and size ** 2 <= cli.MAX_DENSE_ELEMENTS and 0 < density <= 1 and repeat >= 1 \
        and seed >= 0


@settings(max_examples=examples(25), deadline=None)
@given(size=SIZES, density=st.floats(), repeat=REPEATS, seed=st.integers())
def test_any_numbers_exit_0_or_2_without_a_traceback(size, density, repeat, seed):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*SPMV, f"--size={size}", f"--density={density!r}", f"--repeat={repeat}",
                         f"--seed={seed}"])
    assert code in (0, 1, 2)
    assert "Traceback" not in err.getvalue()
    assert code == (0 if _valid(size, density, repeat, seed) else 2), err.getvalue()
    if code == 2:
        assert err.getvalue().startswith("spcomp: "), err.getvalue()


def test_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    import spcomp
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path / "c"))
    spcomp.clear_cache()
    spcomp.compile("y[i] = A[i,j]*x[j]", formats={"A": "csr"}, name="cli_cache")
    assert cli.main(["cache", "--info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "c") in out and "kernels  1" in out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert cli.main(["cache"]) == 0 and "kernels  0" in capsys.readouterr().out
    monkeypatch.setenv("SPCOMP_CACHE_DIR", str(tmp_path))
    (tmp_path).chmod(0o777)
    assert cli.main(["cache", "--info"]) == 2
    assert "writable by other users" in capsys.readouterr().out
    spcomp.clear_cache()
