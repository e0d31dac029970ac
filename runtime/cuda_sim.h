/* cuda_sim.h -- run CUDA C kernels on the CPU ("cuda-sim").
 *
 * spcomp tests its CUDA backend without a GPU by compiling the *very same*
 * emitted CUDA C text with the host C++ compiler:
 *
 *     g++ -O1 -std=c++17 -fPIC -shared -pthread -include cuda_sim.h -x c++ kernel.cu
 *
 * Execution model
 *   - A launch runs every block of the grid. Blocks are distributed over a few
 *     worker OS threads (real concurrency between blocks, so atomics are
 *     exercised for real); a worker runs one block at a time.
 *   - Within a block, each CUDA thread is a cooperative fiber (ucontext) with its
 *     own stack. Fibers switch only at barriers (__syncthreads, __syncwarp, the
 *     warp shuffles and votes), so barriers are real: a thread waits there until
 *     every thread it synchronises with has arrived.
 *   - threadIdx / blockIdx / blockDim / gridDim read the current fiber / block.
 *   - __shared__ variables are `static thread_local`: one copy per worker OS
 *     thread, which is one copy per running block (a worker runs one block at a
 *     time). As on a GPU, their contents are undefined when a block starts.
 *   - Warps are 32 consecutive threads of a block (linear thread id). Warp
 *     operations are strict: a mask that names lanes that do not exist (a block
 *     whose size is not a multiple of 32) or that have exited is reported as an
 *     error, as are lanes of one mask that wait at different warp operations.
 *   - A thread that exits no longer counts at __syncthreads.
 *   - When every live thread of a block waits and none can go on, the launch
 *     fails with a description of the deadlock (it never hangs).
 *   - Atomics are real atomics (the GCC __atomic builtins), correct between the
 *     concurrently running blocks.
 *
 * Not simulated: dynamic shared memory (extern __shared__), independent thread
 * scheduling between barriers (a data race between threads of one block is not
 * observable here), textures, cooperative groups, memory spaces (every pointer
 * is a host pointer). A kernel that reads out of bounds crashes the process.
 *
 * Launch: spc_sim::launch(grid, block, body, workers, err, errlen), where body
 * calls the kernel; the Python side (spcomp.backends.cuda.sim) generates one
 * extern "C" launcher per kernel.
 */
#ifndef SPCOMP_CUDA_SIM_H
#define SPCOMP_CUDA_SIM_H

#define SPCOMP_CUDA_SIM 1

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

/* ------------------------------------------------------------ qualifiers */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* __restrict__ is understood by g++ itself. */

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace spc_sim {

enum WarpOp { OP_SYNC = 0, OP_SHFL = 1, OP_BALLOT = 2 };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    unsigned linear = 0, warp = 0, lane = 0;
    bool done = false;
    const char* waiting = nullptr;  /* the barrier it waits at, for deadlock reports */
    /* warp exchange */
    bool released = false;
    uint64_t xvalue = 0;
    int xsrc = 0;
    uint64_t xresult = 0;
};

struct PendingWarpOp {
    unsigned mask = 0;     /* lanes that take part */
    unsigned arrived = 0;  /* lanes that have arrived */
    int op = 0;
    const char* name = nullptr;
};

struct Warp {
    unsigned exists = 0;   /* lanes that exist (the last warp of a block may be partial) */
    unsigned live = 0;     /* lanes that have not exited */
    PendingWarpOp pending[32];
    int npending = 0;
};

struct Launch {
    dim3 grid, block;
    const std::function<void()>* body = nullptr;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex lock;
    std::string error;
};

struct Block {
    Launch* launch = nullptr;
    uint3 bid{0, 0, 0};
    dim3 bdim, gdim;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned live = 0, bar_arrived = 0, bar_gen = 0;
    uint64_t progress = 0;
    ucontext_t sched;
    char* stacks = nullptr;
    size_t stack_size = 0, nstacks = 0;
    std::string error;

    ~Block() {
        if (stacks) munmap(stacks, stack_size * nstacks);
    }
};

inline thread_local Block* cur_block = nullptr;
inline thread_local Fiber* cur_fiber = nullptr;

inline size_t stack_bytes() {
    static size_t bytes = [] {
        const char* env = getenv("SPCOMP_SIM_STACK_KB");
        long kb = env ? atol(env) : 256;
        if (kb < 32) kb = 32;
        return (size_t)kb * 1024;
    }();
    return bytes;
}

inline std::string thread_name(const Fiber& f) {
    char buf[96];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z,
             cur_block ? cur_block->bid.x : 0, cur_block ? cur_block->bid.y : 0, cur_block ? cur_block->bid.z : 0);
    return buf;
}

/* Record the first error of the block; the launch fails once the block ends. */
inline void sim_error(const std::string& msg) {
    Block* b = cur_block;
    if (b && b->error.empty()) b->error = msg;
}

inline void yield() {
    swapcontext(&cur_fiber->ctx, &cur_block->sched);
}

/* ------------------------------------------------------------- warp ops */
inline void release_warp_op(Block* b, Warp& w, int k, unsigned warp_index) {
    PendingWarpOp op = w.pending[k];
    w.pending[k] = w.pending[w.npending - 1];
    w.npending--;
    Fiber* base = &b->fibers[(size_t)warp_index * 32];
    uint64_t ballot = 0;
    if (op.op == OP_BALLOT) {
        for (unsigned l = 0; l < 32; ++l)
            if ((op.mask >> l & 1u) && base[l].xvalue) ballot |= 1ull << l;
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(op.mask >> l & 1u)) continue;
        Fiber& f = base[l];
        if (op.op == OP_SHFL) {
            int src = f.xsrc;
            bool ok = src >= 0 && src < 32 && (op.mask >> src & 1u);
            f.xresult = ok ? base[src].xvalue : f.xvalue;  /* inactive source: own value */
        } else if (op.op == OP_BALLOT) {
            f.xresult = ballot;
        }
        f.released = true;
    }
    b->progress++;
}

/* Arrive at a warp operation and wait until every lane of `mask` has arrived.
 * Returns this lane's result (the shuffled value or the ballot). */
inline uint64_t warp_op(unsigned mask, int op, const char* name, uint64_t value, int src) {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
    Warp& w = b->warps[f->warp];
    unsigned bit = 1u << f->lane;
    if (!(mask & bit)) {
        sim_error(thread_name(*f) + ": " + name + " with a mask that does not name the calling lane");
        mask |= bit;
    }
    if (mask & ~w.exists) {
        char buf[160];
        snprintf(buf, sizeof buf, ": %s with mask 0x%08x names lanes that do not exist "
                 "(the block size %u is not a multiple of 32)", name, mask, b->bdim.x * b->bdim.y * b->bdim.z);
        sim_error(thread_name(*f) + buf);
        mask &= w.exists;
    }
    if (mask & ~w.live) {
        char buf[160];
        snprintf(buf, sizeof buf, ": %s with mask 0x%08x names lanes that have exited (0x%08x)",
                 name, mask, mask & ~w.live);
        sim_error(thread_name(*f) + buf);
        mask &= w.live;
    }
    f->xvalue = value;
    f->xsrc = src;
    f->released = false;
    int k = -1;
    for (int i = 0; i < w.npending; ++i)
        if (w.pending[i].mask == mask) { k = i; break; }
    if (k < 0) {
        for (int i = 0; i < w.npending; ++i)
            if (w.pending[i].mask & mask) {
                char buf[200];
                snprintf(buf, sizeof buf, ": %s with mask 0x%08x while other lanes wait at %s with mask 0x%08x",
                         name, mask, w.pending[i].name, w.pending[i].mask);
                sim_error(thread_name(*f) + buf);
            }
        k = w.npending++;
        w.pending[k].mask = mask;
        w.pending[k].arrived = 0;
        w.pending[k].op = op;
        w.pending[k].name = name;
    } else if (w.pending[k].op != op) {
        sim_error(thread_name(*f) + ": lanes of one mask wait at different warp operations (" + name +
                  " and " + w.pending[k].name + ")");
    }
    w.pending[k].arrived |= bit;
    b->progress++;
    if ((w.pending[k].arrived & w.pending[k].mask) == w.pending[k].mask) {
        release_warp_op(b, w, k, f->warp);
    } else {
        f->waiting = name;
        while (!f->released) yield();
        f->waiting = nullptr;
    }
    f->released = false;
    return f->xresult;
}

/* ------------------------------------------------------ block barrier */
inline void syncthreads() {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
    unsigned gen = b->bar_gen;
    b->bar_arrived++;
    b->progress++;
    if (b->bar_arrived >= b->live) {
        b->bar_arrived = 0;
        b->bar_gen++;
        return;
    }
    f->waiting = "__syncthreads";
    while (b->bar_gen == gen) yield();
    f->waiting = nullptr;
}

/* Bookkeeping when a thread leaves the kernel. */
inline void thread_exit() {
    Block* b = cur_block;
    Fiber* f = cur_fiber;
    f->done = true;
    b->live--;
    b->progress++;
    Warp& w = b->warps[f->warp];
    unsigned bit = 1u << f->lane;
    w.live &= ~bit;
    for (int i = 0; i < w.npending; ++i) {
        PendingWarpOp& op = w.pending[i];
        if (op.mask & bit) {
            char buf[160];
            snprintf(buf, sizeof buf, " exited while lanes 0x%08x of its warp wait for it at %s",
                     op.arrived, op.name);
            sim_error(thread_name(*f) + buf);
            op.mask &= ~bit;
            if ((op.arrived & op.mask) == op.mask) {
                release_warp_op(b, w, i, f->warp);
                --i;
            }
        }
    }
    if (b->bar_arrived > 0 && b->bar_arrived >= b->live) {
        b->bar_arrived = 0;
        b->bar_gen++;
    }
}

inline void fiber_main() {
    (*cur_block->launch->body)();
    thread_exit();
    /* returning resumes uc_link, the scheduler */
}

/* Leave the current thread now (used by __trap). */
[[noreturn]] inline void thread_abort() {
    thread_exit();
    setcontext(&cur_block->sched);
    abort();
}

inline std::string deadlock_report(Block* b) {
    std::string msg = "deadlock: every live thread of the block waits and none can go on:";
    int shown = 0;
    for (Fiber& f : b->fibers) {
        if (f.done) continue;
        if (shown++ == 8) { msg += " ..."; break; }
        char buf[96];
        snprintf(buf, sizeof buf, " thread %u at %s;", f.linear, f.waiting ? f.waiting : "?");
        msg += buf;
    }
    char buf[64];
    snprintf(buf, sizeof buf, " (block (%u,%u,%u))", b->bid.x, b->bid.y, b->bid.z);
    return msg + buf;
}

inline void run_block(Block* b, unsigned long long index) {
    const dim3 g = b->gdim, bd = b->bdim;
    b->bid.x = (unsigned)(index % g.x);
    b->bid.y = (unsigned)(index / g.x % g.y);
    b->bid.z = (unsigned)(index / ((unsigned long long)g.x * g.y));
    const size_t n = (size_t)bd.x * bd.y * bd.z;
    const size_t ss = stack_bytes();
    if (b->nstacks < n || b->stack_size != ss) {
        if (b->stacks) munmap(b->stacks, b->stack_size * b->nstacks);
        void* mem = mmap(nullptr, ss * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) {
            b->stacks = nullptr;
            b->nstacks = 0;
            b->error = "could not map the fiber stacks";
            return;
        }
        b->stacks = (char*)mem;
        b->stack_size = ss;
        b->nstacks = n;
        long page = sysconf(_SC_PAGESIZE);
        for (size_t i = 0; i < n; ++i) mprotect(b->stacks + i * ss, (size_t)page, PROT_NONE);  /* guard page */
    }
    b->fibers.assign(n, Fiber());
    b->warps.assign((n + 31) / 32, Warp());
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = b->fibers[i];
        f.tid.x = (unsigned)(i % bd.x);
        f.tid.y = (unsigned)(i / bd.x % bd.y);
        f.tid.z = (unsigned)(i / ((size_t)bd.x * bd.y));
        f.linear = (unsigned)i;
        f.warp = (unsigned)(i / 32);
        f.lane = (unsigned)(i % 32);
        b->warps[f.warp].exists |= 1u << f.lane;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = b->stacks + i * ss;
        f.ctx.uc_stack.ss_size = ss;
        f.ctx.uc_link = &b->sched;
        makecontext(&f.ctx, (void (*)())fiber_main, 0);
    }
    for (Warp& w : b->warps) w.live = w.exists;
    b->live = (unsigned)n;
    b->bar_arrived = 0;
    b->bar_gen = 0;
    b->error.clear();
    cur_block = b;
    while (b->live > 0) {
        uint64_t before = b->progress;
        for (Fiber& f : b->fibers) {
            if (f.done) continue;
            cur_fiber = &f;
            swapcontext(&b->sched, &f.ctx);
        }
        if (b->live > 0 && b->progress == before) {
            if (b->error.empty()) b->error = deadlock_report(b);
            break;
        }
    }
    cur_fiber = nullptr;
}

/* Run a whole grid. Returns 0, or -1 with a message in err. */
inline int launch(dim3 grid, dim3 block, const std::function<void()>& body, int workers, char* err, int errlen) {
    auto fail = [&](const std::string& msg) {
        if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", msg.c_str());
        return -1;
    };
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || block.z > 64)
        return fail("invalid block size: a block has 1 to 1024 threads (z at most 64)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
        return fail("invalid grid size");
    unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    Launch L;
    L.grid = grid;
    L.block = block;
    L.body = &body;
    if (workers < 1) {
        unsigned hc = std::thread::hardware_concurrency();
        workers = (int)(hc ? (hc < 8 ? hc : 8) : 2);
    }
    if ((unsigned long long)workers > nblocks) workers = (int)nblocks;
    auto work = [&L]() {
        Block b;
        b.launch = &L;
        b.bdim = L.block;
        b.gdim = L.grid;
        unsigned long long total = (unsigned long long)L.grid.x * L.grid.y * L.grid.z;
        while (!L.failed.load()) {
            unsigned long long k = L.next.fetch_add(1);
            if (k >= total) break;
            run_block(&b, k);
            if (!b.error.empty()) {
                std::lock_guard<std::mutex> g(L.lock);
                if (L.error.empty()) L.error = b.error;
                L.failed.store(true);
            }
        }
        cur_block = nullptr;
    };
    if (workers <= 1) {
        work();
    } else {
        std::vector<std::thread> pool;
        for (int i = 0; i < workers; ++i) pool.emplace_back(work);
        for (auto& t : pool) t.join();
    }
    if (L.failed.load()) return fail(L.error);
    return 0;
}

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp operations take values of at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}

template <typename T>
inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}

inline unsigned lane_id() { return cur_fiber->lane; }

}  // namespace spc_sim

/* ------------------------------------------------------------ built-ins */
#define threadIdx (::spc_sim::cur_fiber->tid)
#define blockIdx (::spc_sim::cur_block->bid)
#define blockDim (::spc_sim::cur_block->bdim)
#define gridDim (::spc_sim::cur_block->gdim)
#define warpSize 32

inline void __syncthreads() { spc_sim::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { spc_sim::warp_op(mask, spc_sim::OP_SYNC, "__syncwarp", 0, 0); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned __activemask() { return spc_sim::cur_block->warps[spc_sim::cur_fiber->warp].live; }
[[noreturn]] inline void __trap() {
    spc_sim::sim_error(spc_sim::thread_name(*spc_sim::cur_fiber) + " called __trap()");
    spc_sim::thread_abort();
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
    int lane = (int)spc_sim::lane_id();
    int src = (lane & ~(width - 1)) + (srcLane & (width - 1));
    return spc_sim::from_bits<T>(spc_sim::warp_op(mask, spc_sim::OP_SHFL, "__shfl_sync", spc_sim::to_bits(var), src));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    int lane = (int)spc_sim::lane_id();
    int src = (lane % width) >= (int)delta ? lane - (int)delta : lane;
    return spc_sim::from_bits<T>(spc_sim::warp_op(mask, spc_sim::OP_SHFL, "__shfl_up_sync", spc_sim::to_bits(var), src));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    int lane = (int)spc_sim::lane_id();
    int src = (lane % width) + (int)delta < width ? lane + (int)delta : lane;
    return spc_sim::from_bits<T>(spc_sim::warp_op(mask, spc_sim::OP_SHFL, "__shfl_down_sync", spc_sim::to_bits(var), src));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
    int lane = (int)spc_sim::lane_id();
    int src = lane ^ laneMask;
    if (src >= 32 || src / width != lane / width) src = lane;
    return spc_sim::from_bits<T>(spc_sim::warp_op(mask, spc_sim::OP_SHFL, "__shfl_xor_sync", spc_sim::to_bits(var), src));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return (unsigned)spc_sim::warp_op(mask, spc_sim::OP_BALLOT, "__ballot_sync", predicate != 0, 0);
}
inline int __any_sync(unsigned mask, int predicate) {
    return (spc_sim::warp_op(mask, spc_sim::OP_BALLOT, "__any_sync", predicate != 0, 0) & mask) != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    unsigned m = mask & __activemask();
    return ((unsigned)spc_sim::warp_op(mask, spc_sim::OP_BALLOT, "__all_sync", predicate != 0, 0) & m) == m;
}

/* ---------------------------------------------------------------- atomics */
#define SPC_SIM_INT_ATOMICS(T)                                                                       \
    inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }          \
    inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }          \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }          \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }            \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }          \
    inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }        \
    inline T atomicCAS(T* a, T compare, T v) {                                                     \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
        return compare;                                                                            \
    }                                                                                              \
    inline T atomicMax(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
        while (old < v &&                                                                          \
               !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) \
            ;                                                                                      \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicMin(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
        while (old > v &&                                                                          \
               !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) \
            ;                                                                                      \
        return old;                                                                                \
    }

SPC_SIM_INT_ATOMICS(int)
SPC_SIM_INT_ATOMICS(unsigned int)
SPC_SIM_INT_ATOMICS(unsigned long long)
SPC_SIM_INT_ATOMICS(long long)
#undef SPC_SIM_INT_ATOMICS

inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short v) {
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}

template <typename F, typename U>
inline F spc_sim_atomic_add_float(F* a, F v) {
    static_assert(sizeof(F) == sizeof(U), "bit type");
    U* bits = reinterpret_cast<U*>(a);
    U old = __atomic_load_n(bits, __ATOMIC_SEQ_CST);
    for (;;) {
        F f;
        memcpy(&f, &old, sizeof f);
        F sum = f + v;
        U next;
        memcpy(&next, &sum, sizeof next);
        if (__atomic_compare_exchange_n(bits, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return f;
    }
}
inline float atomicAdd(float* a, float v) { return spc_sim_atomic_add_float<float, uint32_t>(a, v); }
inline double atomicAdd(double* a, double v) { return spc_sim_atomic_add_float<double, uint64_t>(a, v); }
inline float atomicExch(float* a, float v) {
    float old;
    __atomic_exchange(a, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}

/* ------------------------------------------------------------------ math */
inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long u) { double f; memcpy(&f, &u, 8); return f; }
inline long long __double_as_longlong(double f) { long long u; memcpy(&u, &f, 8); return u; }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T> inline T __ldg(const T* p) { return *p; }

/* CUDA's integer and floating min/max overloads */
#define SPC_SIM_MINMAX(T)                                  \
    inline T min(T a, T b) { return b < a ? b : a; }       \
    inline T max(T a, T b) { return a < b ? b : a; }
SPC_SIM_MINMAX(int)
SPC_SIM_MINMAX(unsigned int)
SPC_SIM_MINMAX(long)
SPC_SIM_MINMAX(unsigned long)
SPC_SIM_MINMAX(long long)
SPC_SIM_MINMAX(unsigned long long)
#undef SPC_SIM_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif /* SPCOMP_CUDA_SIM_H */
