"""The text every emitted CUDA module starts with: thread and warp numbering, bf16
conversions, the bit intrinsics, ``spc_min``/``spc_max``, warp and block reductions,
the bf16 atomic add and the per-thread allocator. The same text compiles under nvcc
and under the CPU harness ``runtime/cuda_sim.h``. The ``spc_`` prefix is the
backend's: IR names may not use it.
"""

PRELUDE = r"""// ---- spcomp CUDA prelude (the same text compiles under nvcc and runtime/cuda_sim.h) ----
#include <stdint.h>
#include <stddef.h>

// global thread / warp numbering for grid-stride loops (1-D launches)
__device__ __forceinline__ int64_t spc_global_thread(void) { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t spc_grid_threads(void) { return (int64_t)gridDim.x * blockDim.x; }
__device__ __forceinline__ int64_t spc_global_warp(void) { return spc_global_thread() / 32; }
__device__ __forceinline__ int64_t spc_grid_warps(void) { return spc_grid_threads() / 32; }
__device__ __forceinline__ int spc_lane(void) { return (int)(threadIdx.x % 32u); }
__device__ __forceinline__ int spc_warp_in_block(void) { return (int)(threadIdx.x / 32u); }
__device__ __forceinline__ int spc_block_warps(void) { return (int)(blockDim.x / 32u); }

// bf16 is stored as the upper 16 bits of an IEEE float32
__device__ __forceinline__ float spc_bf16_to_f32(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }
__device__ __forceinline__ uint16_t spc_f32_to_bf16(float f) {  // round to nearest, ties to even
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
#define SPC_INFINITY_F32 __int_as_float(0x7f800000)
#define SPC_NAN_F32 __int_as_float(0x7fc00000)
#define SPC_INFINITY_F64 __longlong_as_double(0x7ff0000000000000LL)
#define SPC_NAN_F64 __longlong_as_double(0x7ff8000000000000LL)

// index of the lowest set bit of a word, 64 for 0, and its set bits (workspace bitmaps)
__device__ __forceinline__ int64_t spc_ctz(int64_t x) { return x == 0 ? 64 : (int64_t)__ffsll((long long)x) - 1; }
__device__ __forceinline__ int64_t spc_popcount(int64_t x) { return (int64_t)__popcll((unsigned long long)x); }
__device__ __forceinline__ int64_t spc_clear_lowest(int64_t x) { unsigned long long u = (unsigned long long)x; return (int64_t)(u & (u - 1ULL)); }
// a coordinate read from an operand kept within 0..last (a negative one is a huge unsigned one)
__device__ __forceinline__ int64_t spc_clamp_index(int64_t c, int64_t last) { return (unsigned long long)c <= (unsigned long long)last ? c : last; }

template <typename T> __device__ __forceinline__ T spc_min(T a, T b) { return b < a ? b : a; }
template <typename T> __device__ __forceinline__ T spc_max(T a, T b) { return a < b ? b : a; }
template <> __device__ __forceinline__ float spc_min<float>(float a, float b) { return fminf(a, b); }
template <> __device__ __forceinline__ float spc_max<float>(float a, float b) { return fmaxf(a, b); }
template <> __device__ __forceinline__ double spc_min<double>(double a, double b) { return fmin(a, b); }
template <> __device__ __forceinline__ double spc_max<double>(double a, double b) { return fmax(a, b); }

// the language's compound functions (spcomp/notation/functions.py), NumPy's meanings with NaN:
// one overload per float type, so each argument is computed once
#define SPC_FLOAT_FUNCTIONS(T, S) \
__device__ __forceinline__ T spc_relu(T x) { return x < (T)0 ? (T)0 : x; } \
__device__ __forceinline__ T spc_maximum(T a, T b) { return a != a ? a : ((a < b || b != b) ? b : a); } \
__device__ __forceinline__ T spc_minimum(T a, T b) { return a != a ? a : ((a > b || b != b) ? b : a); } \
__device__ __forceinline__ T spc_sign(T x) { return x > (T)0 ? (T)1 : (x < (T)0 ? (T)-1 : x); } \
__device__ __forceinline__ T spc_heaviside(T x, T h) { return x < (T)0 ? (T)0 : (x > (T)0 ? (T)1 : (x != x ? x : h)); } \
__device__ __forceinline__ T spc_mod(T x, T m) { T r = fmod##S(x, m); return (r != (T)0 && ((r < (T)0) != (m < (T)0))) ? r + m : r; } \
__device__ __forceinline__ T spc_gelu(T x) { return (T)0.5 * x * ((T)1 + erf##S(x * (T)0.7071067811865476)); } \
__device__ __forceinline__ T spc_sigmoid(T x) { return (T)1 / ((T)1 + exp##S(-x)); } \
__device__ __forceinline__ T spc_silu(T x) { return x / ((T)1 + exp##S(-x)); } \
__device__ __forceinline__ T spc_softplus(T x) { return log1p##S(exp##S(-fabs##S(x))) + (x < (T)0 ? (T)0 : x); } \
__device__ __forceinline__ T spc_square(T x) { return x * x; } \
__device__ __forceinline__ T spc_cube(T x) { return x * x * x; }
SPC_FLOAT_FUNCTIONS(double, )
SPC_FLOAT_FUNCTIONS(float, f)
#undef SPC_FLOAT_FUNCTIONS

// reductions across a warp (xor butterfly: every lane gets the same total) and a block
struct spc_sum_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct spc_min_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return spc_min<T>(a, b); } };
struct spc_max_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return spc_max<T>(a, b); } };
template <typename Op, typename T> __device__ __forceinline__ T spc_warp_reduce(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = Op()(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
template <typename Op, typename T> __device__ T spc_block_reduce(T v) {  // blockDim.x % 32 == 0
  __shared__ T spc_partials[32];
  v = spc_warp_reduce<Op>(v);
  __syncthreads();  // an earlier reduction has finished reading spc_partials
  if (threadIdx.x % 32u == 0) spc_partials[threadIdx.x / 32u] = v;
  __syncthreads();
  T total = spc_partials[0];
  for (unsigned w = 1; w < blockDim.x / 32u; ++w) total = Op()(total, spc_partials[w]);
  return total;
}
// an inclusive sum across a block (blockDim.x % 32 == 0), every thread calling it;
// *total gets the block's sum (a member loop that scans a scalar: team.py)
template <typename T> __device__ T spc_block_scan(T v, T* total) {
  __shared__ T spc_warp_sums[32];
  const unsigned lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
  for (unsigned offset = 1; offset < 32u; offset <<= 1) {
    const T up = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v += up;
  }
  __syncthreads();  // an earlier scan has finished reading spc_warp_sums
  if (lane == 31u) spc_warp_sums[warp] = v;
  __syncthreads();
  T before = 0, all = 0;
  for (unsigned w = 0; w < blockDim.x / 32u; ++w) {
    const T sum = spc_warp_sums[w];
    if (w < warp) before += sum;
    all += sum;
  }
  *total = all;
  return v + before;
}

// atomics the hardware lacks
__device__ __forceinline__ void spc_atomic_add_bf16(uint16_t* p, float v) {
  unsigned int* word = (unsigned int*)((uintptr_t)p & ~(uintptr_t)3);
  const unsigned int shift = ((uintptr_t)p & 2) ? 16u : 0u;
  unsigned int old = *word, assumed;
  do {
    assumed = old;
    const uint16_t h = spc_f32_to_bf16(spc_bf16_to_f32((uint16_t)(assumed >> shift)) + v);
    old = atomicCAS(word, assumed, (assumed & ~(0xffffu << shift)) | ((unsigned int)h << shift));
  } while (old != assumed);
}

// per-thread workspaces (a module's sort helpers, spcomp/ir/sort.py, follow the prelude)
template <typename T> __device__ __forceinline__ T* spc_alloc(int64_t count, bool zero) {
  T* p = (T*)malloc(sizeof(T) * (size_t)(count > 0 ? count : 1));
  if (p != NULL && zero) for (int64_t k = 0; k < count; ++k) p[k] = (T)0;
  return p;
}
// ---- end of prelude ----
"""
