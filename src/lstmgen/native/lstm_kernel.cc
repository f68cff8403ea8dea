// The LSTM time loop as two XLA FFI handlers (CPU, float32): the per-step products
// h @ recurrent and dz @ recurrent^T, the gate maths fused in one vectorisable pass per step.
//
// Layout (the same as lstmgen.layers._make_recurrence): time-major zs (T, B, 4H), recurrent
// (H, 4H), gate order i, f, g, o, sigmoid(x) = 0.5 * tanh(0.5 x) + 0.5.
//
//   lstm_fwd(zs, h0, c0, recurrent, bias) -> hs (T,B,H), cs (T,B,H), acts (T,B,4H),
//                                           h_last (B,H), c_last (B,H)
//   lstm_bwd(acts, cs, c0, d_hs, d_h_last, d_c_last, recurrent) -> dz (T,B,4H), dh0, dc0
//
// and the layer-normalised cell's pair (see LnStep below), the same loops with the
// normalisation's statistics saved for the backward pass:
//
//   lstm_ln_fwd(zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift)
//       -> hs, cs, acts, ns (T,B,4H), ginv (T,B,4), ms (T,B,H), cinv (T,B), h_last, c_last
//   lstm_ln_bwd(acts, ns, ginv, ms, cinv, cs, c0, d_hs, d_h_last, d_c_last, recurrent,
//               gate_scale, cell_scale, cell_shift) -> dz, da (T,B,4H), du (T,B,H), dh0, dc0
//
// The batch rows are split across worker threads (lstmgen_set_threads), each running the
// whole loop on its rows.
//
// The per-step products. Each worker has few rows (M = 16 for the CLI's default model),
// where OpenBLAS's sgemm is slow: it packs the whole weight matrix again on every call
// (2.4 MB for H = 384), for a product of only M rows. So on AVX2+FMA CPUs the weight
// operand is packed once per handler call (forward: B = recurrent, K = H, N = 4H; backward:
// B = recurrent^T, K = 4H, N = H) into a buffer shared by the workers, and every step runs
// a small register-blocked GEMM on it (PackedB, gemm_packed_avx2 below):
//
//   packed = [k block kb][panel p][k in block][kNR columns]   (kNR = 24, zero-padded at
//            the N tail; each k block at most kKC = 512 deep, so one panel of one block
//            stays in cache while every row block of the worker's chunk reuses it)
//   per step: for kb, for panel p, for each block of kMR = 4 rows: a 4 x 24 tile in 12 ymm
//            accumulators, A (h_prev or dz_t rows, row-major) broadcast one float at a time.
//
// Without AVX2+FMA (or with lstmgen_set_packed_gemm(0)) the products are OpenBLAS's sgemm
// (scipy-openblas32), single-threaded inside each worker.
//
// The gate loops and the GEMM are compiled for the baseline x86-64 and for AVX2+FMA
// (__attribute__((target))), and picked once at load time from the CPU's features (no
// -march=native in the build).

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LSTMGEN_X86 1
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// tanh as XLA's CPU backend and Eigen compute it in float32: a 13/6 rational approximation
// on [-7.9053, 7.9053], clamped outside, x itself for |x| < 0.0004. Branch-free, so the
// loops below vectorise.
static inline __attribute__((always_inline)) float fast_tanh(float x) {
  const float clamp = 7.90531110763549805f;
  float xc = x > clamp ? clamp : (x < -clamp ? -clamp : x);
  float x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * xc;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  float r = p / q;
  float ax = x < 0 ? -x : x;
  return ax < 0.0004f ? x : r;
}

static inline __attribute__((always_inline)) float fast_sigmoid(float x) {
  return 0.5f * fast_tanh(0.5f * x) + 0.5f;
}

// One forward step's gates for B rows: a holds h_prev @ recurrent (B, 4H) on entry and the
// activated gates on exit; z the step's projected inputs.
static inline __attribute__((always_inline)) void fwd_gates_impl(
    int64_t B, int64_t H, const float* __restrict z, const float* __restrict bias,
    float* __restrict a, const float* __restrict c_prev, float* __restrict c_out,
    float* __restrict h_out) {
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict ar = a + b * 4 * H;
    const float* __restrict zr = z + b * 4 * H;
    const float* __restrict cp = c_prev + b * H;
    float* __restrict cr = c_out + b * H;
    float* __restrict hr = h_out + b * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      float i = fast_sigmoid(ar[j] + zr[j] + bias[j]);
      float f = fast_sigmoid(ar[H + j] + zr[H + j] + bias[H + j]);
      float g = fast_tanh(ar[2 * H + j] + zr[2 * H + j] + bias[2 * H + j]);
      float o = fast_sigmoid(ar[3 * H + j] + zr[3 * H + j] + bias[3 * H + j]);
      float c = f * cp[j] + i * g;
      ar[j] = i;
      ar[H + j] = f;
      ar[2 * H + j] = g;
      ar[3 * H + j] = o;
      cr[j] = c;
      hr[j] = o * fast_tanh(c);
    }
  }
}

// One backward step: dh (B,H) holds dz_{t+1} @ recurrent^T on entry (the carried gradient
// of h), dc (B,H) the carried gradient of c; writes dz (B,4H) and dc <- dc_t * f.
static inline __attribute__((always_inline)) void bwd_gates_impl(
    int64_t B, int64_t H, const float* __restrict a, const float* __restrict c_prev,
    const float* __restrict c_t, const float* __restrict dh_out,
    const float* __restrict dh_next, float* __restrict dc_carry, float* __restrict dz) {
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict ar = a + b * 4 * H;
    const float* __restrict cp = c_prev + b * H;
    const float* __restrict ct = c_t + b * H;
    const float* __restrict dho = dh_out + b * H;
    const float* __restrict dhn = dh_next + b * H;
    float* __restrict dcr = dc_carry + b * H;
    float* __restrict dzr = dz + b * 4 * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      float i = ar[j], f = ar[H + j], g = ar[2 * H + j], o = ar[3 * H + j];
      float tc = fast_tanh(ct[j]);
      float dh = dho[j] + dhn[j];
      float dc = dcr[j] + dh * o * (1.0f - tc * tc);
      dzr[j] = dc * g * i * (1.0f - i);
      dzr[H + j] = dc * cp[j] * f * (1.0f - f);
      dzr[2 * H + j] = dc * i * (1.0f - g * g);
      dzr[3 * H + j] = dh * tc * o * (1.0f - o);
      dcr[j] = dc * f;
    }
  }
}

using FwdGates = void (*)(int64_t, int64_t, const float*, const float*, float*, const float*,
                          float*, float*);
using BwdGates = void (*)(int64_t, int64_t, const float*, const float*, const float*,
                          const float*, const float*, float*, float*);

#define LSTM_GATE_VARIANT(suffix, attr)                                                     \
  attr void fwd_gates_##suffix(int64_t B, int64_t H, const float* z, const float* bias,     \
                               float* a, const float* c_prev, float* c_out, float* h_out) { \
    fwd_gates_impl(B, H, z, bias, a, c_prev, c_out, h_out);                                 \
  }                                                                                         \
  attr void bwd_gates_##suffix(int64_t B, int64_t H, const float* a, const float* c_prev,   \
                               const float* c_t, const float* dh_out, const float* dh_next, \
                               float* dc_carry, float* dz) {                                \
    bwd_gates_impl(B, H, a, c_prev, c_t, dh_out, dh_next, dc_carry, dz);                    \
  }

LSTM_GATE_VARIANT(generic, )
#ifdef LSTMGEN_X86
LSTM_GATE_VARIANT(avx2, __attribute__((target("avx2,fma"))))
#endif

// ---------------------------------------------------------------------------------------
// The layer-normalised cell (lstmgen.layers._ln_recurrence): each gate's pre-activation
// p = z + h_prev @ recurrent normalised over its H units, n = (p - mean) * inv, then
// a = n * gate_scale + bias; the new cell state c (carried as it is) normalised for the
// output only: m = (c - mean) * inv, h = o * tanh(m * cell_scale + cell_shift).

constexpr float kLnEpsilon = 1e-5f;  // lstmgen.normalisation.EPSILON

// One step's per-row tensors (row-major, rows of one worker's chunk).
struct LnStep {
  const float* z;      // (M, 4H) projected inputs
  const float* bias;   // (4H)
  const float* gscale; // (4H)
  const float* cscale; // (H)
  const float* cshift; // (H)
  float* a;            // (M, 4H): h_prev @ recurrent on entry (forward), activated gates
  float* n;            // (M, 4H) normalised gate pre-activations
  float* ginv;         // (M, 4) their inverse standard deviations
  float* m;            // (M, H) normalised cell state
  float* cinv;         // (M) its inverse standard deviation
  const float* c_prev; // (M, H)
  float* c;            // (M, H) the cell state
  float* h;            // (M, H) forward: the output
  // Backward only.
  const float* dh_out;  // (M, H) the output's gradient from above
  const float* dh_next; // (M, H) dz_{t+1} @ recurrent^T
  float* dc_carry;      // (M, H) in: the carried gradient of c; out: dc_t * f
  float* dz;            // (M, 4H) out: gradient of the pre-activations p
  float* da;            // (M, 4H) out: gradient of a (for the bias and gate_scale)
  float* du;            // (M, H) out: gradient of m * cell_scale + cell_shift
};

// Mean and 1/sqrt(variance + epsilon) of x[0..n): two passes, as XLA computes them.
static inline __attribute__((always_inline)) void moments(const float* __restrict x,
                                                          int64_t n, float& mean,
                                                          float& inv) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += x[j];
  mean = sum / static_cast<float>(n);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const float d = x[j] - mean;
    sq += d * d;
  }
  inv = 1.0f / std::sqrt(sq / static_cast<float>(n) + kLnEpsilon);
}

// dx of y = (x - mean) * inv given dy and y over n units: inv * (dy - mean(dy) - y * mean(dy * y)).
// dx may be dy (in place), so neither is __restrict; each dx[j] reads only dy[j].
static inline __attribute__((always_inline)) void normalise_backward(
    int64_t n, float inv, const float* __restrict y, const float* dy, float* dx) {
  float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    s1 += dy[j];
    s2 += dy[j] * y[j];
  }
  s1 /= static_cast<float>(n);
  s2 /= static_cast<float>(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dx[j] = inv * (dy[j] - s1 - y[j] * s2);
}

static inline __attribute__((always_inline)) void ln_fwd_gates_impl(int64_t M, int64_t H,
                                                                     const LnStep& s) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < M; ++b) {
    float* __restrict ar = s.a + b * G;
    const float* __restrict zr = s.z + b * G;
    float* __restrict nr = s.n + b * G;
    const float* __restrict cp = s.c_prev + b * H;
    float* __restrict cr = s.c + b * H;
    float* __restrict mr = s.m + b * H;
    float* __restrict hr = s.h + b * H;
#pragma omp simd
    for (int64_t j = 0; j < G; ++j) ar[j] += zr[j];
    for (int64_t k = 0; k < 4; ++k) {
      float mean, inv;
      moments(ar + k * H, H, mean, inv);
      s.ginv[b * 4 + k] = inv;
#pragma omp simd
      for (int64_t j = k * H; j < (k + 1) * H; ++j) nr[j] = (ar[j] - mean) * inv;
    }
    const float* __restrict gs = s.gscale;
    const float* __restrict bs = s.bias;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      float i = fast_sigmoid(nr[j] * gs[j] + bs[j]);
      float f = fast_sigmoid(nr[H + j] * gs[H + j] + bs[H + j]);
      float g = fast_tanh(nr[2 * H + j] * gs[2 * H + j] + bs[2 * H + j]);
      float o = fast_sigmoid(nr[3 * H + j] * gs[3 * H + j] + bs[3 * H + j]);
      ar[j] = i;
      ar[H + j] = f;
      ar[2 * H + j] = g;
      ar[3 * H + j] = o;
      cr[j] = f * cp[j] + i * g;
    }
    float mean, inv;
    moments(cr, H, mean, inv);
    s.cinv[b] = inv;
    const float* __restrict cs = s.cscale;
    const float* __restrict ch = s.cshift;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float m = (cr[j] - mean) * inv;
      mr[j] = m;
      hr[j] = ar[3 * H + j] * fast_tanh(m * cs[j] + ch[j]);
    }
  }
}

static inline __attribute__((always_inline)) void ln_bwd_gates_impl(int64_t M, int64_t H,
                                                                     const LnStep& s) {
  const int64_t G = 4 * H;
  const float* __restrict gs = s.gscale;
  const float* __restrict cs = s.cscale;
  const float* __restrict ch = s.cshift;
  for (int64_t b = 0; b < M; ++b) {
    const float* __restrict ar = s.a + b * G;
    const float* __restrict nr = s.n + b * G;
    const float* __restrict mr = s.m + b * H;
    const float* __restrict cp = s.c_prev + b * H;
    const float* __restrict dho = s.dh_out + b * H;
    const float* __restrict dhn = s.dh_next + b * H;
    float* __restrict dcr = s.dc_carry + b * H;
    float* __restrict dzr = s.dz + b * G;
    float* __restrict dar = s.da + b * G;
    float* __restrict dur = s.du + b * H;
    // The output gate and the gradient of the normalised cell state (in dz's i block).
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float o = ar[3 * H + j];
      const float tc = fast_tanh(mr[j] * cs[j] + ch[j]);
      const float dh = dho[j] + dhn[j];
      const float du = dh * o * (1.0f - tc * tc);
      dur[j] = du;
      dzr[j] = du * cs[j];
      dar[3 * H + j] = dh * tc * o * (1.0f - o);
    }
    // dc from the normalisation (in dz's f block), then the other gates.
    normalise_backward(H, s.cinv[b], mr, dzr, dzr + H);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float i = ar[j], f = ar[H + j], g = ar[2 * H + j];
      const float dc = dcr[j] + dzr[H + j];
      dar[j] = dc * g * i * (1.0f - i);
      dar[H + j] = dc * cp[j] * f * (1.0f - f);
      dar[2 * H + j] = dc * i * (1.0f - g * g);
      dcr[j] = dc * f;
    }
    // Through each gate's normalisation: dn = da * gate_scale (in dz), then dp.
#pragma omp simd
    for (int64_t j = 0; j < G; ++j) dzr[j] = dar[j] * gs[j];
    for (int64_t k = 0; k < 4; ++k)
      normalise_backward(H, s.ginv[b * 4 + k], nr + k * H, dzr + k * H, dzr + k * H);
  }
}

using LnGates = void (*)(int64_t, int64_t, const LnStep&);

#define LN_GATE_VARIANT(suffix, attr)                                             \
  attr void ln_fwd_gates_##suffix(int64_t M, int64_t H, const LnStep& s) {        \
    ln_fwd_gates_impl(M, H, s);                                                   \
  }                                                                               \
  attr void ln_bwd_gates_##suffix(int64_t M, int64_t H, const LnStep& s) {        \
    ln_bwd_gates_impl(M, H, s);                                                   \
  }

LN_GATE_VARIANT(generic, )
#ifdef LSTMGEN_X86
LN_GATE_VARIANT(avx2, __attribute__((target("avx2,fma"))))
#endif

// ---------------------------------------------------------------------------------------
// The per-step product C (M x N) = A (M x K) @ B (K x N) on a pre-packed B (AVX2+FMA).

// A 4 x 24 tile: 12 ymm accumulators + 3 for the B row + 1 for the broadcast A value (all
// 16 registers). Per k: 3 loads of B, 4 broadcasts of A, 12 FMAs (6 cycles on Zen 3's two
// FMA pipes, the loads fit beside them); every row block of 4 rows reuses one panel.
constexpr int kMR = 4;   // rows per micro-kernel tile
constexpr int kNV = 3;   // ymm vectors (8 floats) per panel row
constexpr int kNR = 8 * kNV;  // columns per panel
// The depth of a k block. Deep K (the backward pass's 4H, and H = 1024's forward) is split
// in blocks of (nearly) equal depth, at most kKC, the partial products accumulated in C, so
// that the worker's slice of A (M x kc) and the current panel block (kc x kNR, 48 KiB) stay
// in L2 while the panels go by. Measured on Zen 3 (512 KiB L2 per core): kc = 256 ... 768
// or unblocked within noise for K <= 2048; for K = 4096 (H = 1024's backward) blocks of
// 512 ~10% faster than unblocked.
constexpr int64_t kKC = 512;

// B packed in column panels, block by block along K (see the note at the top of the file).
struct PackedB {
  int64_t K = 0, N = 0, nr = kNR;
  int64_t kc = 0;       // depth of each k block (the last one may be shallower)
  int64_t blocks = 0;   // number of k blocks
  int64_t panels = 0;   // ceil(N / nr)
  float* data = nullptr;

  void plan(int64_t K_, int64_t N_, int64_t nr_, int64_t kc_max) {
    K = K_, N = N_, nr = nr_;
    blocks = std::max<int64_t>(1, (K + kc_max - 1) / kc_max);
    kc = (K + blocks - 1) / blocks;
    panels = (N + nr - 1) / nr;
  }
  int64_t floats() const { return K * panels * nr; }
  int64_t units() const { return blocks * panels; }  // (k block, panel) pairs
  // Panel p of k block kb (the blocks before it are kc deep, each kc x (panels * nr)).
  float* panel(int64_t kb, int64_t p) const {
    return data + kb * kc * panels * nr + p * depth(kb) * nr;
  }
  int64_t depth(int64_t kb) const { return std::min(kc, K - kb * kc); }
};

// Packs the (k block, panel) pairs [u0, u1) of B, where B[k][n] = src[k * ld + n], or
// src[n * ld + k] when transposed (the backward pass packs recurrent^T from recurrent).
// Columns past N are zeros, so the micro-kernel always runs whole panels.
void pack_b(const PackedB& pb, const float* src, int64_t ld, bool transposed, int64_t u0,
            int64_t u1) {
  const int64_t nr = pb.nr;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t kb = u / pb.panels, p = u % pb.panels;
    const int64_t k0 = kb * pb.kc, kc = pb.depth(kb), n0 = p * nr;
    const int64_t cols = std::min(nr, pb.N - n0);
    float* dst = pb.panel(kb, p);
    if (!transposed) {
      for (int64_t k = 0; k < kc; ++k) {
        std::memcpy(dst + k * nr, src + (k0 + k) * ld + n0, sizeof(float) * cols);
        std::fill(dst + k * nr + cols, dst + (k + 1) * nr, 0.0f);
      }
    } else {
      // Column n of B is row n of src: read it contiguously, write with stride nr.
      for (int64_t j = 0; j < cols; ++j) {
        const float* row = src + (n0 + j) * ld + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * nr + j] = row[k];
      }
      for (int64_t k = 0; k < kc; ++k) std::fill(dst + k * nr + cols, dst + (k + 1) * nr, 0.0f);
    }
  }
}

#ifdef LSTMGEN_X86
#define LSTMGEN_AVX2 __attribute__((target("avx2,fma")))

// C[0:MR, 0:cols] (+)= A[0:MR, 0:kc] @ panel, for an MR x (8 NV) tile; A row-major with
// leading dimension lda, the panel kc x (8 NV) contiguous. Adds to C when accumulate (the
// k blocks after the first). Only the cols valid columns are stored (masked at the N tail).
template <int MR, int NV>
LSTMGEN_AVX2 inline __attribute__((always_inline)) void micro_tile(
    int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
    float* __restrict c, int64_t ldc, int64_t cols, bool accumulate) {
  __m256 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, b += 8 * NV) {
    __m256 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_load_ps(b + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  if (cols == 8 * NV) {
    for (int r = 0; r < MR; ++r) {
      for (int v = 0; v < NV; ++v) {
        float* cp = c + r * ldc + 8 * v;
        __m256 x = acc[r][v];
        if (accumulate) x = _mm256_add_ps(x, _mm256_loadu_ps(cp));
        _mm256_storeu_ps(cp, x);
      }
    }
    return;
  }
  // The N tail: lanes j < cols - 8 v of vector v are stored, the others left alone.
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int v = 0; v < NV; ++v) {
    const int64_t n = cols - 8 * v;
    if (n <= 0) break;
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(n, 8))), lane);
    for (int r = 0; r < MR; ++r) {
      float* cp = c + r * ldc + 8 * v;
      __m256 x = acc[r][v];
      if (accumulate) x = _mm256_add_ps(x, _mm256_maskload_ps(cp, mask));
      _mm256_maskstore_ps(cp, mask, x);
    }
  }
}

// micro_tile on a tile of `rows` rows, 1 <= rows <= R (the M tail: a compile-time row count
// keeps the accumulators in registers).
template <int R, int NV>
LSTMGEN_AVX2 inline void tail_tile(int64_t rows, int64_t kc, const float* a, int64_t lda,
                                   const float* b, float* c, int64_t ldc, int64_t cols,
                                   bool accumulate) {
  if constexpr (R >= 1) {
    if (rows == R) {
      micro_tile<R, NV>(kc, a, lda, b, c, ldc, cols, accumulate);
    } else {
      tail_tile<R - 1, NV>(rows, kc, a, lda, b, c, ldc, cols, accumulate);
    }
  }
}

// C (M x N, ldc) = A (M x K, lda) @ B, B packed (pb). Loop order: k block, panel, row
// block, so each panel block (kc x nr) is fetched once per step and reused by all M rows.
template <int MR, int NV>
LSTMGEN_AVX2 void gemm_packed(int64_t M, const float* a, int64_t lda, const PackedB& pb,
                              float* c, int64_t ldc) {
  for (int64_t kb = 0; kb < pb.blocks; ++kb) {
    const int64_t k0 = kb * pb.kc, kc = pb.depth(kb);
    const bool accumulate = kb > 0;
    for (int64_t p = 0; p < pb.panels; ++p) {
      const float* panel = pb.panel(kb, p);
      const int64_t n0 = p * 8 * NV, cols = std::min<int64_t>(8 * NV, pb.N - n0);
      const float* ak = a + k0;
      float* cn = c + n0;
      int64_t r = 0;
      for (; r + MR <= M; r += MR)
        micro_tile<MR, NV>(kc, ak + r * lda, lda, panel, cn + r * ldc, ldc, cols, accumulate);
      // The M tail (fewer than MR rows left): a shorter tile.
      if (r < M)
        tail_tile<MR - 1, NV>(M - r, kc, ak + r * lda, lda, panel, cn + r * ldc, ldc, cols,
                              accumulate);
    }
  }
}

LSTMGEN_AVX2 void gemm_packed_avx2(int64_t M, const float* a, int64_t lda, const PackedB& pb,
                                   float* c, int64_t ldc) {
  gemm_packed<kMR, kNV>(M, a, lda, pb, c, ldc);
}
#endif  // LSTMGEN_X86

using PackedGemm = void (*)(int64_t, const float*, int64_t, const PackedB&, float*, int64_t);

struct Dispatch {
  FwdGates fwd = fwd_gates_generic;
  BwdGates bwd = bwd_gates_generic;
  LnGates ln_fwd = ln_fwd_gates_generic;
  LnGates ln_bwd = ln_bwd_gates_generic;
  PackedGemm gemm = nullptr;  // nullptr: OpenBLAS's sgemm for the per-step products
  const char* name = "generic";
  Dispatch() {
#ifdef LSTMGEN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      fwd = fwd_gates_avx2;
      bwd = bwd_gates_avx2;
      ln_fwd = ln_fwd_gates_avx2;
      ln_bwd = ln_bwd_gates_avx2;
      gemm = gemm_packed_avx2;
      name = "avx2+fma";
    }
#endif
  }
};

Dispatch& dispatch() {
  static Dispatch d;
  return d;
}

// Batch rows are independent through the whole loop (row b of h_t depends only on row b of
// h_{t-1}), so the rows are split into contiguous chunks, one per worker thread, each
// running all T steps with no synchronisation between steps: no busy-waiting, and a worker
// slowed by other load delays only its own chunk. OpenBLAS itself runs on one thread.
std::atomic<int> g_threads{1};
std::atomic<bool> g_packed{true};  // the packed GEMM where the CPU has it (else OpenBLAS)

// A one-shot barrier: the workers of one call wait here until the weights are packed.
class Barrier {
 public:
  explicit Barrier(int64_t n) : left_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (--left_ == 0) {
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [this] { return left_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int64_t left_;
};

// Runs body(b0, b1) on contiguous chunks of the B rows, one worker thread per chunk (the
// calling thread takes the first). With units > 0, each worker first runs pack(u0, u1) on
// its share of [0, units) and all wait for each other before body: the packed weights are
// shared, and packing them in parallel halves that (small) serial part of the call.
template <typename P, typename F>
void for_row_chunks(int64_t B, int64_t units, P&& pack, F&& body) {
  // At least 8 rows per chunk: fewer make the per-step products inefficient.
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(g_threads.load(), B / 8));
  Barrier packed(n);
  auto work = [&](int64_t k) {
    if (units > 0) {
      pack(units * k / n, units * (k + 1) / n);
      if (n > 1) packed.arrive_and_wait();
    }
    body(B * k / n, B * (k + 1) / n);
  };
  if (n == 1) {
    work(0);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(n - 1);
  for (int64_t k = 1; k < n; ++k) workers.emplace_back(work, k);
  work(0);
  for (auto& w : workers) w.join();
}

// The packing buffer of the calling thread, kept between calls (so a call does not fault in
// megabytes of fresh pages). Per thread: XLA may run several calls at once, each on its own
// thread, which waits for its workers. nullptr if it cannot be allocated.
float* pack_buffer(int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t floats = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (buffer.floats < floats) {
    std::free(buffer.data);
    const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
    buffer.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    buffer.floats = buffer.data ? floats : 0;
  }
  return buffer.data;
}

// Plans the packed B (K x N) for this call; false: use OpenBLAS (no packed GEMM for this
// CPU, switched off, or no memory).
bool plan_packed(const Dispatch& d, int64_t K, int64_t N, PackedB& pb) {
  if (d.gemm == nullptr || !g_packed.load() || K == 0 || N == 0) return false;
  pb.plan(K, N, kNR, kKC);
  pb.data = pack_buffer(pb.floats());
  return pb.data != nullptr;
}

// The forward time loop, each worker on its chunk of rows: per step a = h_prev @ recurrent
// (the step's (M, 4H) rows of acts), then gates(M, t, b0, a, c_prev, c_out, h_out).
template <class Gates>
void forward_loop(int64_t T, int64_t B, int64_t H, const float* R, const float* h0d,
                  const float* c0d, float* hsd, float* csd, float* ad, float* hl, float* cl,
                  Gates&& gates) {
  const int64_t G = 4 * H;
  const Dispatch& d = dispatch();
  // B operand of a = h_prev @ recurrent: recurrent itself, K = H, N = 4H.
  PackedB pb;
  const bool packed = T > 0 && B > 0 && plan_packed(d, H, G, pb);
  auto pack = [&](int64_t u0, int64_t u1) { pack_b(pb, R, G, false, u0, u1); };
  for_row_chunks(B, packed ? pb.units() : 0, pack, [&](int64_t b0, int64_t b1) {
    const int64_t M = b1 - b0;
    if (M <= 0) return;
    const float* h_prev = h0d + b0 * H;
    const float* c_prev = c0d + b0 * H;
    for (int64_t t = 0; t < T; ++t) {
      float* a = ad + (t * B + b0) * G;
      // a = h_prev @ recurrent   (M,H) x (H,4H)
      if (packed) {
        d.gemm(M, h_prev, H, pb, a, G);
      } else {
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)G, (int)H,
                          1.0f, h_prev, (int)H, R, (int)G, 0.0f, a, (int)G);
      }
      float* c_out = csd + (t * B + b0) * H;
      float* h_out = hsd + (t * B + b0) * H;
      gates(M, t, b0, a, c_prev, c_out, h_out);
      h_prev = h_out;
      c_prev = c_out;
    }
    std::memcpy(hl + b0 * H, h_prev, sizeof(float) * M * H);
    std::memcpy(cl + b0 * H, c_prev, sizeof(float) * M * H);
  });
}

// The backward time loop: per step (last first) gates(M, t, b0, c_prev, dh, dc, dz_t) with
// dh the carried gradient of h_t and dc that of c_t, then dh = dz_t @ recurrent^T. The
// carries live in the outputs dh_all and dc_all (dh0, dc0 at the end), starting from the
// final states' gradients d_h_last and d_c_last.
template <class Gates>
void backward_loop(int64_t T, int64_t B, int64_t H, const float* R, const float* c,
                   const float* c0d, const float* d_h_last, const float* d_c_last, float* dzd,
                   float* dh_all, float* dc_all, Gates&& gates) {
  const int64_t G = 4 * H;
  std::memcpy(dh_all, d_h_last, sizeof(float) * B * H);
  std::memcpy(dc_all, d_c_last, sizeof(float) * B * H);
  const Dispatch& d = dispatch();
  // B operand of dh = dz_t @ recurrent^T: recurrent^T, K = 4H, N = H.
  PackedB pb;
  const bool packed = T > 0 && B > 0 && plan_packed(d, G, H, pb);
  auto pack = [&](int64_t u0, int64_t u1) { pack_b(pb, R, G, true, u0, u1); };
  for_row_chunks(B, packed ? pb.units() : 0, pack, [&](int64_t b0, int64_t b1) {
    const int64_t M = b1 - b0;
    if (M <= 0) return;
    float* dh = dh_all + b0 * H;
    float* dc = dc_all + b0 * H;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* c_prev = t > 0 ? c + ((t - 1) * B + b0) * H : c0d + b0 * H;
      float* dz_t = dzd + (t * B + b0) * G;
      gates(M, t, b0, c_prev, dh, dc, dz_t);
      // dh = dz_t @ recurrent^T   (M,4H) x (4H,H)
      if (packed) {
        d.gemm(M, dz_t, G, pb, dh, H);
      } else {
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)H, (int)G,
                          1.0f, dz_t, (int)G, R, (int)G, 0.0f, dh, (int)H);
      }
    }
  });
}

ffi::Error LstmFwdImpl(ffi::Buffer<ffi::F32> zs, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> recurrent,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> hs,
                       ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> acts,
                       ffi::ResultBuffer<ffi::F32> h_last,
                       ffi::ResultBuffer<ffi::F32> c_last) {
  auto zd = zs.dimensions();
  auto rd = recurrent.dimensions();
  if (zd.size() != 3 || rd.size() != 2) {
    return ffi::Error::InvalidArgument("lstm_fwd: zs must be (T, B, 4H), recurrent (H, 4H)");
  }
  const int64_t T = zd[0], B = zd[1], G = zd[2], H = rd[0];
  if (G != 4 * H || rd[1] != G || h0.element_count() != B * H ||
      c0.element_count() != B * H || bias.element_count() != G) {
    return ffi::Error::InvalidArgument("lstm_fwd: inconsistent shapes");
  }
  const float* z = zs.typed_data();
  const float* bs = bias.typed_data();
  const Dispatch& d = dispatch();
  forward_loop(T, B, H, recurrent.typed_data(), h0.typed_data(), c0.typed_data(),
               hs->typed_data(), cs->typed_data(), acts->typed_data(), h_last->typed_data(),
               c_last->typed_data(),
               [&](int64_t M, int64_t t, int64_t b0, float* a, const float* c_prev,
                   float* c_out, float* h_out) {
                 d.fwd(M, H, z + (t * B + b0) * G, bs, a, c_prev, c_out, h_out);
               });
  return ffi::Error::Success();
}

ffi::Error LstmBwdImpl(ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> cs,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> d_hs,
                       ffi::Buffer<ffi::F32> d_h_last, ffi::Buffer<ffi::F32> d_c_last,
                       ffi::Buffer<ffi::F32> recurrent, ffi::ResultBuffer<ffi::F32> dz,
                       ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0) {
  auto ad = acts.dimensions();
  auto rd = recurrent.dimensions();
  if (ad.size() != 3 || rd.size() != 2) {
    return ffi::Error::InvalidArgument("lstm_bwd: acts must be (T, B, 4H), recurrent (H, 4H)");
  }
  const int64_t T = ad[0], B = ad[1], G = ad[2], H = rd[0];
  if (G != 4 * H || rd[1] != G || cs.element_count() != T * B * H ||
      d_hs.element_count() != T * B * H || c0.element_count() != B * H ||
      d_h_last.element_count() != B * H || d_c_last.element_count() != B * H) {
    return ffi::Error::InvalidArgument("lstm_bwd: inconsistent shapes");
  }
  const float* a = acts.typed_data();
  const float* c = cs.typed_data();
  const float* dho = d_hs.typed_data();
  const Dispatch& d = dispatch();
  backward_loop(T, B, H, recurrent.typed_data(), c, c0.typed_data(), d_h_last.typed_data(),
                d_c_last.typed_data(), dz->typed_data(), dh0->typed_data(), dc0->typed_data(),
                [&](int64_t M, int64_t t, int64_t b0, const float* c_prev, float* dh,
                    float* dc, float* dz_t) {
                  const int64_t at = t * B + b0;
                  d.bwd(M, H, a + at * G, c_prev, c + at * H, dho + at * H, dh, dc, dz_t);
                });
  return ffi::Error::Success();
}

// The layer-normalised cell (see LnStep): the same loops, the statistics saved for the
// backward pass.
ffi::Error LstmLnFwdImpl(ffi::Buffer<ffi::F32> zs, ffi::Buffer<ffi::F32> h0,
                         ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> recurrent,
                         ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> gate_scale,
                         ffi::Buffer<ffi::F32> cell_scale, ffi::Buffer<ffi::F32> cell_shift,
                         ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> cs,
                         ffi::ResultBuffer<ffi::F32> acts, ffi::ResultBuffer<ffi::F32> ns,
                         ffi::ResultBuffer<ffi::F32> ginv, ffi::ResultBuffer<ffi::F32> ms,
                         ffi::ResultBuffer<ffi::F32> cinv, ffi::ResultBuffer<ffi::F32> h_last,
                         ffi::ResultBuffer<ffi::F32> c_last) {
  auto zd = zs.dimensions();
  auto rd = recurrent.dimensions();
  if (zd.size() != 3 || rd.size() != 2) {
    return ffi::Error::InvalidArgument("lstm_ln_fwd: zs must be (T, B, 4H), recurrent (H, 4H)");
  }
  const int64_t T = zd[0], B = zd[1], G = zd[2], H = rd[0];
  if (G != 4 * H || rd[1] != G || h0.element_count() != B * H ||
      c0.element_count() != B * H || bias.element_count() != G ||
      gate_scale.element_count() != G || cell_scale.element_count() != H ||
      cell_shift.element_count() != H) {
    return ffi::Error::InvalidArgument("lstm_ln_fwd: inconsistent shapes");
  }
  LnStep base{};
  base.bias = bias.typed_data();
  base.gscale = gate_scale.typed_data();
  base.cscale = cell_scale.typed_data();
  base.cshift = cell_shift.typed_data();
  const float* z = zs.typed_data();
  float* nd = ns->typed_data();
  float* gid = ginv->typed_data();
  float* md = ms->typed_data();
  float* cid = cinv->typed_data();
  const Dispatch& d = dispatch();
  forward_loop(T, B, H, recurrent.typed_data(), h0.typed_data(), c0.typed_data(),
               hs->typed_data(), cs->typed_data(), acts->typed_data(), h_last->typed_data(),
               c_last->typed_data(),
               [&](int64_t M, int64_t t, int64_t b0, float* a, const float* c_prev,
                   float* c_out, float* h_out) {
                 const int64_t at = t * B + b0;
                 LnStep s = base;
                 s.z = z + at * G, s.a = a, s.n = nd + at * G, s.ginv = gid + at * 4;
                 s.m = md + at * H, s.cinv = cid + at, s.c_prev = c_prev, s.c = c_out;
                 s.h = h_out;
                 d.ln_fwd(M, H, s);
               });
  return ffi::Error::Success();
}

ffi::Error LstmLnBwdImpl(ffi::Buffer<ffi::F32> acts, ffi::Buffer<ffi::F32> ns,
                         ffi::Buffer<ffi::F32> ginv, ffi::Buffer<ffi::F32> ms,
                         ffi::Buffer<ffi::F32> cinv, ffi::Buffer<ffi::F32> cs,
                         ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> d_hs,
                         ffi::Buffer<ffi::F32> d_h_last, ffi::Buffer<ffi::F32> d_c_last,
                         ffi::Buffer<ffi::F32> recurrent, ffi::Buffer<ffi::F32> gate_scale,
                         ffi::Buffer<ffi::F32> cell_scale, ffi::Buffer<ffi::F32> cell_shift,
                         ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> da,
                         ffi::ResultBuffer<ffi::F32> du, ffi::ResultBuffer<ffi::F32> dh0,
                         ffi::ResultBuffer<ffi::F32> dc0) {
  auto ad = acts.dimensions();
  auto rd = recurrent.dimensions();
  if (ad.size() != 3 || rd.size() != 2) {
    return ffi::Error::InvalidArgument(
        "lstm_ln_bwd: acts must be (T, B, 4H), recurrent (H, 4H)");
  }
  const int64_t T = ad[0], B = ad[1], G = ad[2], H = rd[0];
  if (G != 4 * H || rd[1] != G || ns.element_count() != T * B * G ||
      ginv.element_count() != T * B * 4 || ms.element_count() != T * B * H ||
      cinv.element_count() != T * B || cs.element_count() != T * B * H ||
      d_hs.element_count() != T * B * H || c0.element_count() != B * H ||
      d_h_last.element_count() != B * H || d_c_last.element_count() != B * H ||
      gate_scale.element_count() != G || cell_scale.element_count() != H ||
      cell_shift.element_count() != H) {
    return ffi::Error::InvalidArgument("lstm_ln_bwd: inconsistent shapes");
  }
  LnStep base{};
  base.gscale = gate_scale.typed_data();
  base.cscale = cell_scale.typed_data();
  base.cshift = cell_shift.typed_data();
  const float* a = acts.typed_data();
  const float* nd = ns.typed_data();
  const float* gid = ginv.typed_data();
  const float* md = ms.typed_data();
  const float* cid = cinv.typed_data();
  const float* dho = d_hs.typed_data();
  float* dad = da->typed_data();
  float* dud = du->typed_data();
  const Dispatch& d = dispatch();
  backward_loop(T, B, H, recurrent.typed_data(), cs.typed_data(), c0.typed_data(),
                d_h_last.typed_data(), d_c_last.typed_data(), dz->typed_data(),
                dh0->typed_data(), dc0->typed_data(),
                [&](int64_t M, int64_t t, int64_t b0, const float* c_prev, float* dh,
                    float* dc, float* dz_t) {
                  const int64_t at = t * B + b0;
                  LnStep s = base;
                  // The gates read only: the pointers are const in use.
                  s.a = const_cast<float*>(a + at * G);
                  s.n = const_cast<float*>(nd + at * G);
                  s.ginv = const_cast<float*>(gid + at * 4);
                  s.m = const_cast<float*>(md + at * H);
                  s.cinv = const_cast<float*>(cid + at);
                  s.c_prev = c_prev, s.dh_out = dho + at * H, s.dh_next = dh;
                  s.dc_carry = dc, s.dz = dz_t, s.da = dad + at * G, s.du = dud + at * H;
                  d.ln_bwd(M, H, s);
                });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmFwd, LstmFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // zs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // acts
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_last
                                  .Ret<ffi::Buffer<ffi::F32>>());  // c_last

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBwd, LstmBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_h_last
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_c_last
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dc0

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmLnFwd, LstmLnFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // zs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gate_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cell_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cell_shift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // acts
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ns
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ginv
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ms
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cinv
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_last
                                  .Ret<ffi::Buffer<ffi::F32>>());  // c_last

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmLnBwd, LstmLnBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ns
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ginv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ms
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cinv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_h_last
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d_c_last
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gate_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cell_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cell_shift
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // da
                                  .Ret<ffi::Buffer<ffi::F32>>()  // du
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dc0

extern "C" {
// Which gate-loop variant the CPU check picked ("avx2+fma" or "generic").
const char* lstmgen_gate_variant() { return dispatch().name; }
// The per-step products: the packed AVX2+FMA GEMM where the CPU has it, unless switched off
// here (on = 0: OpenBLAS's sgemm, as on CPUs without AVX2; read at each call).
void lstmgen_set_packed_gemm(int on) { g_packed.store(on != 0); }
const char* lstmgen_gemm_variant() {
  return dispatch().gemm != nullptr && g_packed.load() ? "packed avx2+fma" : "openblas";
}
// Worker threads over batch-row chunks (each runs the whole time loop on its rows).
void lstmgen_set_threads(int n) { g_threads.store(n > 0 ? n : 1); }
int lstmgen_get_threads() { return g_threads.load(); }
// OpenBLAS's own thread count for the per-step products (<= 0: leave OpenBLAS's default).
void lstmgen_set_blas_threads(int n) {
  if (n > 0) scipy_openblas_set_num_threads(n);
}
int lstmgen_get_blas_threads() { return scipy_openblas_get_num_threads(); }
}
