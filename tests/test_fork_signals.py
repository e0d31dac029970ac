"""Fork and Ctrl-C (docs/architecture.md, "Fork and Ctrl-C").

* A process forked after a threaded kernel ran hung on its first parallel call
  (libgomp's team and the Python pool's threads do not survive ``fork``): the
  children below, of every start method, compile and run parallel kernels.
* Ctrl-C during a long call waited for the kernel to end (10-20 s), and during a
  wait on the Python pool left workers writing into freed arrays: the scripts
  below send SIGINT to themselves during a call planned to take 30 s and check
  that KeyboardInterrupt comes within seconds and the kernel still works after.

Every child runs under a timeout, so a regression fails instead of hanging.
Signals are sent in subprocesses only: a stray KeyboardInterrupt in the test
process would stop the whole session.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

import spcomp
from spcomp.runtime import threads as threads_module

TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _calls_always_split(monkeypatch):
    """These tests are about threads across fork and signals, not about when a call
    splits: every call splits (the measured threshold of a loaded host keeps a 2M-unit
    call on one thread). The variable reaches spawned children; the attribute, forked ones."""
    monkeypatch.setattr(threads_module, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setenv("SPCOMP_MIN_PARALLEL_WORK", "0")


def _spmv_operands(seed=1):
    """SpMV with 2M nonzeros: it goes over threads."""
    rng = np.random.default_rng(seed)
    n, per_row = 100_000, 20
    A = sp.csr_matrix((rng.standard_normal(n * per_row), rng.integers(0, n, n * per_row),
                       np.arange(0, n * per_row + 1, per_row)), shape=(n, n))
    return A, rng.standard_normal(n)


def _spmv():
    return spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"})


def _child_kernels() -> bool:
    """In a child: a kernel compiled there (an expression the parent did not use),
    on the child's default thread count, then on two threads; results against SciPy."""
    A, x = _spmv_operands()
    k = spcomp.compile("y[i] = A[i,j] * x[j] + x[i]", formats={"A": "csr"})
    ok = all(np.allclose(k(A=A, x=x), A @ x + x) for _ in range(2))
    spcomp.set_num_threads(2)
    return ok and all(np.allclose(k(A=A, x=x), A @ x + x) for _ in range(2))


def _multiprocessing_child():
    sys.exit(0 if _child_kernels() else 1)


@pytest.fixture
def threaded_parent():
    """A kernel that ran on two threads in this process (libgomp's team when there
    is one, else the Python pool): the state a fork used to break."""
    before = spcomp.get_num_threads()
    spcomp.set_num_threads(2)
    A, x = _spmv_operands()
    k = _spmv()
    for _ in range(3):
        assert np.allclose(k(A=A, x=x), A @ x)
    yield k, A, x
    spcomp.set_num_threads(before)


def _wait(pid: int) -> int:
    """The exit code of child ``pid``; kills it and fails after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not finish in {TIMEOUT_S} s (hung)")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_os_fork_child_runs_the_parents_kernel_and_new_ones(threaded_parent):
    """The child starts on one thread. Back on two, the parent's kernel called with
    the very operands whose launch it remembers (libgomp's driver when there is
    one: the driver then runs its chunks on the calling thread) gives the right
    answer, and so does a kernel compiled in the child, on the Python pool."""
    k, A, x = threaded_parent
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ok = spcomp.get_num_threads() == 1
            spcomp.set_num_threads(2)
            ok = ok and np.allclose(k(A=A, x=x), A @ x) and _child_kernels()
            ok = ok and any(t.name == "spcomp-worker" for t in threading.enumerate())
            code = 0 if ok else 1
        finally:
            os._exit(code)
    assert _wait(pid) == 0


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_child_compiles_and_runs_parallel_kernels(threaded_parent, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    p = multiprocessing.get_context(method).Process(target=_multiprocessing_child)
    p.start()
    p.join(TIMEOUT_S)
    if p.exitcode is None:
        p.kill()
        p.join()
        pytest.fail(f"the {method} child did not finish in {TIMEOUT_S} s (hung)")
    assert p.exitcode == 0


def test_pool_waits_for_its_workers_before_an_exception_propagates():
    """The calling thread's own range fails while a worker is still in its range:
    run_ranges raises only once the worker is done (it may be writing into arrays
    the caller frees next), and the pool serves the next call as before."""
    started, finished = threading.Event(), []

    def call(lo, hi):
        if lo == 0:
            started.wait(TIMEOUT_S)  # (a range no worker has taken is withdrawn instead)
            raise ValueError("first range failed")
        started.set()
        time.sleep(0.3)
        finished.append(hi)
        return 0

    work = threads_module.SPLIT_ALWAYS_WORK  # splits without a measurement
    with pytest.raises(ValueError):
        threads_module.run_ranges(call, 10, threads=2, work=work)
    assert finished == [10]
    assert threads_module.run_ranges(lambda lo, hi: hi - lo, 10, threads=2, work=work) == [5, 5]


# ------------------------------------------------------------------- Ctrl-C

_PREAMBLE = r"""
import os, signal, sys, threading, time
import numpy as np, spcomp

# a child started where SIGINT is ignored (a shell's background job, some CI runners)
# inherits the ignore, and Python then installs no handler: restore Python's own
signal.signal(signal.SIGINT, signal.default_int_handler)

def interrupted_within(seconds, call):
    sent = []
    def fire():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)
    threading.Timer(0.3, fire).start()
    try:
        call()
    except KeyboardInterrupt:
        late = time.perf_counter() - sent[0]
        assert late < seconds, f"KeyboardInterrupt came {late:.2f} s after the signal"
        return late
    raise AssertionError("the call ended without KeyboardInterrupt")
"""

_KERNEL_SCRIPT = _PREAMBLE + r"""
spcomp.set_num_threads(2)
k = spcomp.compile("C[i,j] = A[i,k] * B[k,l] * D[l,j]", dtype="float32",
                   schedule=spcomp.Schedule().no_blas().no_precompute())

def operands(n):
    rng = np.random.default_rng(n)
    return {name: rng.standard_normal((n, n)).astype(np.float32) for name in "ABD"}

small = operands(160)  # 160**4 work units: long enough for the helper thread too
start = time.perf_counter()
k(**small)
calibration = time.perf_counter() - start
big = operands(int(160 * (30 / calibration) ** 0.25) + 1)  # a call of about 30 s
# the first call takes the general path, the second the fast path it planned
lates = [interrupted_within(5, lambda: k(**big)) for _ in range(2)]
ref = small["A"].astype(np.float64) @ small["B"] @ small["D"]
for _ in range(2):
    error = np.abs(k(**small) - ref).max() / np.abs(ref).max()
    assert error < 1e-4, error
from spcomp.runtime import interrupt
assert not interrupt.requested()
print("ok", lates)
"""


@pytest.mark.parametrize("threads", ["driver", "pool"])
def test_ctrl_c_stops_a_long_kernel_and_the_kernel_works_after(threads):
    # "pool": no native driver (SPCOMP_LIBGOMP=0), the Python pool runs the threads
    env = {**os.environ, "SPCOMP_LIBGOMP": "0" if threads == "pool" else "1"}
    run = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT, threads], capture_output=True, text=True,
                         timeout=180, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.startswith("ok")


_SPGEMM_SCRIPT = _PREAMBLE + r"""
import scipy.sparse as sp
from spcomp.runtime import chunks
mode = sys.argv[1]
spcomp.set_num_threads(1 if mode == "one-pass" else 2)
chunks.MODE = "never" if mode == "two-phase" else "always"
k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"})
small = sp.random(300, 300, density=0.1, format="csr", random_state=2)
k(A=small, B=small)

def full(n):  # every entry stored: n**3 products
    return sp.csr_matrix(np.random.default_rng(n).random((n, n)))

A = full(600)
start = time.perf_counter()
k(A=A, B=A)
A = full(int(600 * (35 / (time.perf_counter() - start)) ** (1 / 3)))  # a call of 20-30 s
for _ in range(3):  # stopped while the kernel grows its output arrays (freed with the call)
    interrupted_within(5, lambda: k(A=A, B=A))
got = k(A=small, B=small).to_scipy()
assert abs(got - small @ small).max() < 1e-12
print("ok")
"""


@pytest.mark.parametrize("mode", ["chunks", "chunks-pool", "two-phase", "one-pass"])
def test_ctrl_c_stops_a_sparse_product_in_every_assembly(mode):
    env = {**os.environ, "SPCOMP_LIBGOMP": "0" if mode == "chunks-pool" else "1"}
    run = subprocess.run([sys.executable, "-c", _SPGEMM_SCRIPT, mode], capture_output=True, text=True,
                         timeout=180, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.startswith("ok")


_HELPER_SCRIPT = _PREAMBLE + r"""
from spcomp.runtime import interrupt

def raising(signum, frame):  # a SIGINT handler of the user's: the watch does not apply
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, raising)

def watch():  # stands for a kernel: polls the flag
    while not interrupt.requested():
        time.sleep(0.001)
    time.sleep(0.2)  # returns late: the caller must wait for it
    finished.append(time.perf_counter())
    return 4

finished = []
interrupted_within(5, lambda: interrupt.run(interrupt.LONG_WORK, watch))
assert finished and not interrupt.requested()
assert interrupt.run(interrupt.LONG_WORK, lambda a, b: a + b, 2, 3) == 5
assert interrupt.run(interrupt.LONG_WORK, threading.current_thread).name == "spcomp-interruptible"
print("ok")
"""


def test_with_a_handler_of_its_own_ctrl_c_sets_the_flag_waits_for_the_helper_and_clears_it():
    """Where SIGINT has a handler other than Python's (which may not raise), a long
    call runs on the helper thread and the main thread waits, interruptibly."""
    run = subprocess.run([sys.executable, "-c", _HELPER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def test_a_long_call_is_watched_on_the_main_thread():
    """A long call stays on the main thread (libgomp's team is per calling thread);
    while it runs, the wakeup fd is the watcher's: a SIGINT byte there sets the flag
    and is passed on to the fd the process had, which is back after the call."""
    from spcomp.runtime import interrupt
    assert threading.current_thread() is threading.main_thread()
    # Python's own handler (another test or library in this worker may have set one:
    # then the call would go to the helper, the other test's subject)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    before = signal.set_wakeup_fd(write_end)
    seen = {}

    def probe():
        seen["thread"] = threading.current_thread()
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        seen["fd"] = fd
        os.write(fd, bytes([signal.SIGINT]))  # what the C-level handler writes on Ctrl-C
        deadline = time.monotonic() + 5
        while not interrupt.requested() and time.monotonic() < deadline:
            time.sleep(0.001)
        seen["flag"] = interrupt.requested()
        return 4
    try:
        assert interrupt.run(interrupt.LONG_WORK, probe) == 4
        assert signal.set_wakeup_fd(before) == write_end
        assert seen["thread"] is threading.main_thread() and seen["fd"] != write_end
        assert seen["flag"] and not interrupt.requested()
        deadline = time.monotonic() + 5
        forwarded = b""
        while not forwarded and time.monotonic() < deadline:
            try:
                forwarded = os.read(read_end, 16)
            except BlockingIOError:
                time.sleep(0.001)
        assert forwarded == bytes([signal.SIGINT])
        with spcomp.thread_limit(1):
            assert interrupt.run(interrupt.LONG_WORK, spcomp.get_num_threads) == 1
    finally:
        signal.set_wakeup_fd(before)
        signal.signal(signal.SIGINT, handler)
        os.close(read_end)
        os.close(write_end)


def test_a_kernel_that_finds_the_flag_set_raises_keyboard_interrupt():
    """A call on another thread while the flag is set stops too (the flag is the
    process's), and raises KeyboardInterrupt rather than returning part of a result."""
    from spcomp.runtime import flags
    k = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", schedule=spcomp.Schedule().no_blas())
    A = np.ones((50, 50))
    flag = flags.interrupt
    flag.value = 1
    try:
        with pytest.raises(KeyboardInterrupt):
            k(A=A, B=A)
    finally:
        flag.value = 0
    np.testing.assert_allclose(k(A=A, B=A), A @ A)


# ------------------------------------------------------------------ the IR

def test_the_poll_is_placed_in_the_outer_loop_of_a_nest_only():
    two = spcomp.compile("y[i] = A[i,j] * x[j]", formats={"A": "csr"}).ir
    outer = two.index("for (int64_t i = lo; i < hi; i++)")
    poll = two.index("if (interrupt_requested()) { return 4; }")
    inner = two.index("for (int64_t pA2")
    assert outer < poll < inner and two.count("interrupt_requested") == 1
    assert "interrupt_requested" not in spcomp.compile("y[i] = x[i] * z[i]").ir


def test_a_poll_frees_the_workspace_it_stops_with():
    """SpGEMM's workspace is the kernel's own: a poll that stops the kernel frees it
    (the output's arrays are the runtime's to free)."""
    ir = spcomp.compile("C[i,j] = A[i,k] * B[k,j]", formats={"A": "csr", "B": "csr", "C": "csr"}).ir
    poll = next(line for line in ir.splitlines() if "interrupt_requested" in line)
    assert "free(workspace);" in poll and "free(workspace_bits);" in poll and "return 4;" in poll


def test_a_lock_held_at_fork_is_free_in_the_child():
    """spcomp's module locks (runtime/forksafe.Lock) come back released in a forked child."""
    from spcomp.runtime import forksafe
    lock = forksafe.Lock()
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: the lock must be free, or this would hang (the parent times out)
            ok = lock.acquire(timeout=5)
            os._exit(0 if ok else 3)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            raise AssertionError("the child hung on a lock held at fork")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        lock.release()


def test_a_watched_call_inside_another_puts_the_wakeup_fd_back_once():
    """A long call made while another is under way on the main thread (a program's
    run calling a kernel) watches once: the fd the process had is back at the end."""
    from spcomp.runtime import interrupt
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    before = signal.set_wakeup_fd(write_end)
    try:
        inner = lambda: interrupt.run(interrupt.LONG_WORK, lambda: 7)  # noqa: E731
        assert interrupt.run(interrupt.LONG_WORK, inner) == 7
        assert signal.set_wakeup_fd(write_end) == write_end
    finally:
        signal.set_wakeup_fd(before)
        signal.signal(signal.SIGINT, handler)
        os.close(read_end)
        os.close(write_end)
