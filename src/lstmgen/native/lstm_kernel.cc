// The LSTM time loop as two XLA FFI handlers (CPU, float32): the per-step products
// h @ recurrent and dz @ recurrent^T by OpenBLAS's sgemm (scipy-openblas32), the gate maths
// fused in one vectorisable pass per step.
//
// Layout (the same as lstmgen.layers._make_recurrence): time-major zs (T, B, 4H), recurrent
// (H, 4H), gate order i, f, g, o, sigmoid(x) = 0.5 * tanh(0.5 x) + 0.5.
//
//   lstm_fwd(zs, h0, c0, recurrent, bias) -> hs (T,B,H), cs (T,B,H), acts (T,B,4H),
//                                           h_last (B,H), c_last (B,H)
//   lstm_bwd(acts, cs, c0, d_hs, d_h_last, d_c_last, recurrent) -> dz (T,B,4H), dh0, dc0
//
// The batch rows are split across worker threads (lstmgen_set_threads), each running the
// whole loop on its rows; OpenBLAS runs single-threaded inside each.
//
// The gate loops are compiled twice, for the baseline x86-64 and for AVX2+FMA, and picked
// once at load time from the CPU's features (no -march=native in the build).

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

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
#if defined(__x86_64__) && defined(__GNUC__)
LSTM_GATE_VARIANT(avx2, __attribute__((target("avx2,fma"))))
#endif

struct Dispatch {
  FwdGates fwd = fwd_gates_generic;
  BwdGates bwd = bwd_gates_generic;
  const char* name = "generic";
  Dispatch() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      fwd = fwd_gates_avx2;
      bwd = bwd_gates_avx2;
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

template <typename F>
void for_row_chunks(int64_t B, F&& body) {
  // At least 8 rows per chunk: fewer make the sgemm inefficient.
  int64_t n = std::max<int64_t>(1, std::min<int64_t>(g_threads.load(), B / 8));
  if (n == 1) {
    body(int64_t{0}, B);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(n - 1);
  for (int64_t k = 1; k < n; ++k) {
    workers.emplace_back([&, k] { body(B * k / n, B * (k + 1) / n); });
  }
  body(int64_t{0}, B / n);
  for (auto& w : workers) w.join();
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
  const float* R = recurrent.typed_data();
  const float* bs = bias.typed_data();
  const float* h0d = h0.typed_data();
  const float* c0d = c0.typed_data();
  float* hsd = hs->typed_data();
  float* csd = cs->typed_data();
  float* ad = acts->typed_data();
  float* hl = h_last->typed_data();
  float* cl = c_last->typed_data();
  const Dispatch& d = dispatch();
  for_row_chunks(B, [&](int64_t b0, int64_t b1) {
    const int64_t M = b1 - b0;
    if (M <= 0) return;
    const float* h_prev = h0d + b0 * H;
    const float* c_prev = c0d + b0 * H;
    for (int64_t t = 0; t < T; ++t) {
      float* a = ad + (t * B + b0) * G;
      // a = h_prev @ recurrent   (M,H) x (H,4H)
      scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)G, (int)H,
                        1.0f, h_prev, (int)H, R, (int)G, 0.0f, a, (int)G);
      float* c_out = csd + (t * B + b0) * H;
      float* h_out = hsd + (t * B + b0) * H;
      d.fwd(M, H, z + (t * B + b0) * G, bs, a, c_prev, c_out, h_out);
      h_prev = h_out;
      c_prev = c_out;
    }
    std::memcpy(hl + b0 * H, h_prev, sizeof(float) * M * H);
    std::memcpy(cl + b0 * H, c_prev, sizeof(float) * M * H);
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
  const float* c0d = c0.typed_data();
  const float* dho = d_hs.typed_data();
  const float* R = recurrent.typed_data();
  float* dzd = dz->typed_data();
  // The carries live in the outputs: dh (gradient of h_t from step t+1) and dc.
  float* dh_all = dh0->typed_data();
  float* dc_all = dc0->typed_data();
  std::memcpy(dh_all, d_h_last.typed_data(), sizeof(float) * B * H);
  std::memcpy(dc_all, d_c_last.typed_data(), sizeof(float) * B * H);
  const Dispatch& d = dispatch();
  for_row_chunks(B, [&](int64_t b0, int64_t b1) {
    const int64_t M = b1 - b0;
    if (M <= 0) return;
    float* dh = dh_all + b0 * H;
    float* dc = dc_all + b0 * H;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* c_prev = t > 0 ? c + ((t - 1) * B + b0) * H : c0d + b0 * H;
      float* dz_t = dzd + (t * B + b0) * G;
      d.bwd(M, H, a + (t * B + b0) * G, c_prev, c + (t * B + b0) * H, dho + (t * B + b0) * H,
            dh, dc, dz_t);
      // dh = dz_t @ recurrent^T   (M,4H) x (4H,H)
      scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)H, (int)G, 1.0f,
                        dz_t, (int)G, R, (int)G, 0.0f, dh, (int)H);
    }
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

extern "C" {
// Which gate-loop variant the CPU check picked ("avx2+fma" or "generic").
const char* lstmgen_gate_variant() { return dispatch().name; }
// Worker threads over batch-row chunks (each runs the whole time loop on its rows).
void lstmgen_set_threads(int n) { g_threads.store(n > 0 ? n : 1); }
int lstmgen_get_threads() { return g_threads.load(); }
// OpenBLAS's own thread count for the per-step products (<= 0: leave OpenBLAS's default).
void lstmgen_set_blas_threads(int n) {
  if (n > 0) scipy_openblas_set_num_threads(n);
}
int lstmgen_get_blas_threads() { return scipy_openblas_get_num_threads(); }
}
