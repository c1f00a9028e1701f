// RegNet's grouped 3x3 convolution (PyTorch padding 1, stride 1 or 2), forward and both
// gradients, NHWC float32 or bfloat16 tensors with float32 arithmetic, on CPU.
// On AVX-512 builds group width 8 runs 512-bit kernels with two groups per vector (Z16 below):
// the step's grouped convolutions 0.43 -> 0.34 s on a 2-core Zen 5 EPYC (oneDNN: 0.71 s).
//
// Why: with group width 8 (RegNetY-400MF) oneDNN 3.7's AVX2 kernels run these convolutions at
// 15-40 GFLOP/s forward and 5-50 backward on a 2-core EPYC whose FMA peak is ~178 (its stride-2
// backward-data kernel is the slowest), ~30% of the float32 step there. A group of 8 channels
// gives each input value only 8 outputs per tap, so a kernel that broadcasts an input and
// multiplies it into one 8-wide weight vector issues a load per FMA and runs at half the FMA
// peak on this CPU (one 256-bit load per cycle, measured). These kernels reuse each broadcast
// across the three taps of a kernel row instead:
//   forward      y[k]  = sum_{ty, tx, i} x[s*k + tx - 1, i] W[ty, tx, i]        (Cols MODE 0 / 1)
//   grad input   dx[q] = sum dy[(q + 1 - tx) / s, o] W[ty, tx, :, o]           (MODE 0 with the
//                kernel flipped at stride 1, MODE 2 at stride 2: out[2m + tx - 1] += dy[m] W[tx])
//   grad kernel  dW[ty, tx, i] = sum_k x[s*k + tx - 1, i] dy[k]  (3 tx x 3 i accumulators, a
//                sliding window of dy vectors; per-shard partial sums)
// Input rows are first packed ([8-channel slice][column][8], zero columns for the padding), so
// the inner loops are broadcasts at constant offsets, weight loads and FMAs, with no border
// tests. Requires cg % 8 == 0 and C_out = C_in (RegNet's b convolution).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "kernel_util.h"

namespace seer_tf {
using namespace tensorflow;  // NOLINT

REGISTER_OP("SeerGroupedConv3x3")
    .Input("x: T")       // (N, H, W, C)
    .Input("kernel: T")  // (3, 3, cg, C), TF's grouped layout
    .Output("y: T")      // (N, (H - 1) / s + 1, (W - 1) / s + 1, C)
    .Attr("T: {float, bfloat16}")  // bfloat16: converted in registers, float32 arithmetic
    .Attr("stride: int")
    .Attr("vector_bits: int = 0")  // 0: the widest the build has; 256: AVX2-width (tests)
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int stride;
      TF_RETURN_IF_ERROR(c->GetAttr("stride", &stride));
      if (stride != 1 && stride != 2) return errors::InvalidArgument("stride must be 1 or 2, got ", stride);
      auto x = c->input(0);
      TF_RETURN_IF_ERROR(c->WithRank(x, 4, &x));
      std::vector<shape_inference::DimensionHandle> dims = {c->Dim(x, 0)};
      for (int d = 1; d < 3; ++d) {
        auto n = c->Dim(x, d);
        if (c->ValueKnown(n)) {
          dims.push_back(c->MakeDim((c->Value(n) - 1) / stride + 1));
        } else {
          dims.push_back(c->UnknownDim());
        }
      }
      dims.push_back(c->Dim(c->input(1), 3));
      c->set_output(0, c->MakeShape(dims));
      return absl::OkStatus();
    });

REGISTER_OP("SeerGroupedConv3x3Grad")
    .Input("dy: T")
    .Input("x: T")
    .Input("kernel: T")
    .Output("dx: T")
    .Output("dkernel: T")
    .Attr("T: {float, bfloat16}")
    .Attr("stride: int")
    .Attr("vector_bits: int = 0")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    });

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));
typedef int64_t v8q __attribute__((vector_size(64)));
template <typename T>
inline T LoadT(const float* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void StoreT(float* p, T v) { std::memcpy(p, &v, sizeof(v)); }
constexpr v8 kZero = {0, 0, 0, 0, 0, 0, 0, 0};

// 8 channels as float32 from float32 or bfloat16 (uint16_t bits) memory, and back: the vector
// form of kernel_util.h's Load / Store (round to nearest even, as TF's casts; finite values).
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
inline v8 Load8(const float* p) { return LoadT<v8>(p); }
inline v8 Load8(const uint16_t* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof(h));
  return (v8)(__builtin_convertvector(h, u32x8) << 16);
}
inline void Store8(float* p, v8 v) { StoreT(p, v); }
inline void Store8(uint16_t* p, v8 v) {
  u32x8 u = (u32x8)v;
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const u16x8 h = __builtin_convertvector(u, u16x8);
  std::memcpy(p, &h, sizeof(h));
}

// Vector layouts. A block is the set of output channels one accumulator holds; packed rows hold
// kCol floats per column and block, and an input value is broadcast from kIStep-apart floats.
// Y8: one 8-channel slice per 256-bit vector, any group width that is a multiple of 8; packed
//     rows are [slice][column][8] and a broadcast is one float.
// Z16: group width 8 on AVX-512 builds: two groups per 512-bit vector with their lanes
//     interleaved (A0, B0, A1, B1, ...), so that one 64-bit broadcast of (xA[i], xB[i]) feeds
//     16 lanes of both groups' outputs: twice the work per broadcast and per FMA of Y8. Packed
//     rows are [pair of slices][column][8][2] (a zero slice after an odd last one); outputs are
//     de-interleaved as they are stored.
struct Y8 {
  using T = v8;
  static constexpr int kWidth = 8, kCol = 8, kIStep = 1;
  static int64_t Blocks(int64_t C) { return C / 8; }
  static float Bcast(const float* p) { return *p; }
  static T Load(const float* p) { return LoadT<T>(p); }
  // n (<= kWidth) channels in natural order <-> an accumulator (n is always 8 here)
  template <typename Raw>
  static T LoadNat(const Raw* p, int64_t) { return Load8(p); }
  template <typename Raw>
  static void StoreNat(Raw* p, T v, int64_t) { Store8(p, v); }
  // Where block b's inputs start in a packed row: its group's first slice.
  static int64_t InputBlock(int64_t b, int64_t cg, int64_t L) { return (b * 8 / cg) * cg * L; }
  static int64_t Channel(int64_t b, int q) { return b * 8 + q; }  // lane q's channel
};
struct Z16 {
  using T = v16;
  static constexpr int kWidth = 16, kCol = 16, kIStep = 2;
  static int64_t Blocks(int64_t C) { return (C + 15) / 16; }
  static T Bcast(const float* p) {  // as 64-bit integers: bit-exact (a double could be a
    int64_t q;                        // denormal, flushed to zero, or a NaN, quieted)
    std::memcpy(&q, p, sizeof(q));
    return (T)(v8q{} + q);
  }
  static T Load(const float* p) { return LoadT<T>(p); }
  template <typename Raw>
  static T LoadNat(const Raw* p, int64_t n) {
    const v8 a = Load8(p), b = n > 8 ? Load8(p + 8) : kZero;
    return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  }
  template <typename Raw>
  static void StoreNat(Raw* p, T v, int64_t n) {
    const v8 a = __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14);
    Store8(p, a);
    if (n > 8) {
      const v8 b = __builtin_shufflevector(v, v, 1, 3, 5, 7, 9, 11, 13, 15);
      Store8(p + 8, b);
    }
  }
  static int64_t InputBlock(int64_t b, int64_t, int64_t L) { return b * L * 16; }
  static int64_t Channel(int64_t b, int q) { return b * 16 + (q % 2) * 8 + q / 2; }
};

// Packed rows: an input row as V's blocks of columns (all of them), column 0 holding input
// column -1 and zeros past the row's end, so tiles never test for the border (PyTorch's zero
// padding) and read their broadcasts at constant offsets from one pointer. A row is packed in
// one sequential pass over its pixels (all groups at once): packing group by group read 32 of
// every C * 4 bytes per pass and stalled on the misses (38% of the kernel gradient's time, perf).
// dst: [Blocks(C)][L][kCol]; columns [lead, lead + w_in) hold the row, the rest of [0, L) zeros.
template <typename V, typename Raw>
void PackRow(float* dst, const Raw* src, int64_t C, int64_t w_in, int64_t L, int64_t lead) {
  const int64_t blocks = V::Blocks(C);
  for (int64_t b = 0; b < blocks; ++b) {
    float* d = dst + b * L * V::kCol;
    for (int64_t c = 0; c < lead; ++c) StoreT(d + c * V::kCol, typename V::T{});
    for (int64_t c = lead + w_in; c < L; ++c) StoreT(d + c * V::kCol, typename V::T{});
  }
  for (int64_t m = 0; m < w_in; ++m) {
    const Raw* p = src + m * C;
    float* d = dst + (lead + m) * V::kCol;
    for (int64_t b = 0; b < blocks; ++b)
      StoreT(d + b * L * V::kCol, V::LoadNat(p + b * V::kWidth, C - b * V::kWidth));
  }
}

// How a tile of P outputs (k0 + j, j < P) reads packed input columns pc(k0) + m, m < kInputs,
// through tap tx = 0, 1, 2:
//   MODE 0: out[k] += in[k + tx - 1] w[tx]    stride-1 forward, stride-1 input gradient (flipped w)
//   MODE 1: out[k] += in[2k + tx - 1] w[tx]   stride-2 forward
//   MODE 2: out[2m + tx - 1] += in[m] w[tx]   stride-2 input gradient (P even, k0 even)
// Each input broadcast feeds up to 3 accumulators (1.5 on average at stride 2): the FMAs
// outnumber the loads, which bound a one-FMA-per-broadcast kernel at half the FMA peak.
template <int MODE, int P>
struct Cols {
  static constexpr int kInputs = MODE == 0 ? P + 2 : MODE == 1 ? 2 * P + 1 : P / 2 + 1;
  static int64_t pc(int64_t k0) { return MODE == 0 ? k0 : MODE == 1 ? 2 * k0 : k0 / 2 + 1; }
  static constexpr int target(int m, int tx) {  // the output j that input m feeds via tx, or -1
    return MODE == 0   ? (m - tx >= 0 && m - tx < P ? m - tx : -1)
           : MODE == 1 ? ((m - tx) % 2 == 0 && m - tx >= 0 && (m - tx) / 2 < P ? (m - tx) / 2 : -1)
                       : (2 * m + tx - 1 >= 0 && 2 * m + tx - 1 < P ? 2 * m + tx - 1 : -1);
  }
};

// Input n of the tile's sweep; inputs are taken from both halves in turn (0, h, 1, h + 1, ...)
// so that consecutive FMAs go to different accumulators (independent dependency chains).
template <typename V, int MODE, int P, int N>
inline __attribute__((always_inline)) void Feed(typename V::T* acc, const float* in, typename V::T w0,
                                                typename V::T w1, typename V::T w2) {
  using K = Cols<MODE, P>;
  constexpr int half = (K::kInputs + 1) / 2;
  constexpr int m = N % 2 == 0 ? N / 2 : half + N / 2;
  constexpr int j0 = K::target(m, 0), j1 = K::target(m, 1), j2 = K::target(m, 2);
  const auto x = V::Bcast(in + m * V::kCol);
  if constexpr (j0 >= 0) acc[j0] += x * w0;
  if constexpr (j1 >= 0) acc[j1] += x * w1;
  if constexpr (j2 >= 0) acc[j2] += x * w2;
}

template <typename V, int MODE, int P, int... N>
inline __attribute__((always_inline)) void FeedAll(std::integer_sequence<int, N...>, typename V::T* acc,
                                                   const float* in, typename V::T w0, typename V::T w1,
                                                   typename V::T w2) {
  (Feed<V, MODE, P, N>(acc, in, w0, w1, w2), ...);
}

// out[j * out_step + 0..nch], j < valid, for the tile at k0. prow[r]: the block's inputs in
// packed input row r; wrow[r]: its weights packed as [input-role channel][tx][kWidth].
template <typename V, int MODE, int P, typename Raw>
void RowTile(const float* const* prow, const float* const* wrow, int nrows, int slices, int64_t L,
             int64_t k0, Raw* out, int64_t out_step, int64_t valid, int64_t nch) {
  using K = Cols<MODE, P>;
  constexpr int kW = V::kWidth;
  typename V::T acc[P];
  for (int j = 0; j < P; ++j) acc[j] = typename V::T{};
  const int64_t pc = K::pc(k0);
  for (int r = 0; r < nrows; ++r) {
    for (int sl = 0; sl < slices; ++sl) {
      const float* in = prow[r] + (sl * L + pc) * V::kCol;
      const float* w = wrow[r] + sl * 8 * 3 * kW;
      for (int i = 0; i < 8; ++i, in += V::kIStep, w += 3 * kW) {
        const auto w0 = V::Load(w), w1 = V::Load(w + kW), w2 = V::Load(w + 2 * kW);
        FeedAll<V, MODE, P>(std::make_integer_sequence<int, K::kInputs>{}, acc, in, w0, w1, w2);
      }
    }
  }
  for (int j = 0; j < P && j < valid; ++j) V::StoreNat(out + j * out_step, acc[j], nch);
}

// The tiles of a row of K outputs, fn(P, k0, valid). P is 4, 6, 8 or 10 (10 accumulators + 3
// weights + broadcasts fit the 16 ymm registers): the row is split into ceil(K / 10) tiles of
// about equal size, full tiles of the size that covers that, the remainder in the smallest that
// covers it. A small tile is slow twice over: fewer FMAs per broadcast, and fewer independent
// accumulators than the FMA latency needs (K = 14 as 10 + 4 ran its last 4 at half speed).
template <typename F>
void Tiles(int64_t K, const F& fn) {
  auto with_size = [&](int64_t want, int64_t k0, int64_t valid) {
    if (want <= 4) fn(std::integral_constant<int, 4>{}, k0, valid);
    else if (want <= 6) fn(std::integral_constant<int, 6>{}, k0, valid);
    else if (want <= 8) fn(std::integral_constant<int, 8>{}, k0, valid);
    else fn(std::integral_constant<int, 10>{}, k0, valid);
  };
  if (K <= 0) return;
  const int64_t n = (K + 9) / 10, want = (K + n - 1) / n;
  const int64_t P = want <= 4 ? 4 : want <= 6 ? 6 : want <= 8 ? 8 : 10;
  int64_t k = 0;
  for (; k + P <= K; k += P) with_size(P, k, P);
  if (k < K) with_size(K - k, k, K - k);
}

// Packed columns the tiles of a row of K outputs read (so the zero padding covers them).
template <int MODE>
int64_t Reach(int64_t K, int64_t w_in) {
  int64_t reach = w_in + 2;
  Tiles(K, [&](auto P, int64_t k0, int64_t) {
    reach = std::max(reach, Cols<MODE, decltype(P)::value>::pc(k0) + Cols<MODE, decltype(P)::value>::kInputs);
  });
  return reach;
}

// Outputs 0 .. K-1 of one row, nch channels (out_step apart).
template <typename V, int MODE, typename Raw>
void RowSweep(const float* const* prow, const float* const* wrow, int nrows, int slices, int64_t L,
              int64_t K, Raw* out, int64_t out_step, int64_t nch) {
  Tiles(K, [&](auto P, int64_t k0, int64_t valid) {
    RowTile<V, MODE, decltype(P)::value>(prow, wrow, nrows, slices, L, k0, out + k0 * out_step,
                                         out_step, valid, nch);
  });
}

struct Geometry {
  int64_t N, H, W, C, cg, Ho, Wo;
  int s;
  int slices() const { return static_cast<int>(cg / 8); }
};

// Reads and checks x (N, H, W, C) and kernel (3, 3, cg, C); on bad input sets ctx's status.
void ReadGeometry(OpKernelContext* ctx, const Tensor& x, const Tensor& k, int s, Geometry* g) {
  OP_REQUIRES(ctx, x.dims() == 4, errors::InvalidArgument("x must be NHWC, got ", x.shape().DebugString()));
  OP_REQUIRES(ctx, k.dims() == 4 && k.dim_size(0) == 3 && k.dim_size(1) == 3,
              errors::InvalidArgument("kernel must be (3, 3, cg, C), got ", k.shape().DebugString()));
  g->N = x.dim_size(0), g->H = x.dim_size(1), g->W = x.dim_size(2), g->C = x.dim_size(3);
  g->cg = k.dim_size(2), g->s = s;
  OP_REQUIRES(ctx, k.dim_size(3) == g->C && g->cg > 0 && g->cg % 8 == 0 && g->C % g->cg == 0,
              errors::InvalidArgument("kernel ", k.shape().DebugString(), " for ", g->C,
                                      " channels: needs C_out = C_in and a group width that is a "
                                      "multiple of 8"));
  OP_REQUIRES(ctx, s == 1 || s == 2, errors::InvalidArgument("stride must be 1 or 2, got ", s));
  g->Ho = g->H > 0 ? (g->H - 1) / s + 1 : 0, g->Wo = g->W > 0 ? (g->W - 1) / s + 1 : 0;
}

// Kernel (3, 3, cg, C) repacked per output block b as [ty][input-role c < cg][tx][kWidth] (lane
// q holds channel V::Channel(b, q); zeros past C). transposed: the input gradient's roles (its
// outputs are x's channels, its inputs dy's), with the taps flipped (flip) for the stride-1
// gradient, which then runs as a forward convolution.
template <typename V, typename Raw>
std::vector<float> PackKernel(const Geometry& g, const Raw* w, bool transposed, bool flip) {
  constexpr int kW = V::kWidth;
  std::vector<float> p(V::Blocks(g.C) * 3 * g.cg * 3 * kW, 0.0f);
  for (int64_t b = 0; b < V::Blocks(g.C); ++b)
    for (int ty = 0; ty < 3; ++ty)
      for (int64_t c = 0; c < g.cg; ++c)
        for (int tx = 0; tx < 3; ++tx)
          for (int q = 0; q < kW; ++q) {
            const int64_t lane = V::Channel(b, q), base = lane - lane % g.cg;
            if (lane >= g.C) continue;
            const int t = flip ? (2 - ty) * 3 + (2 - tx) : ty * 3 + tx;
            // forward: w[t, c, lane]; transposed: w[t, lane's place in its group, base + c]
            const float v = Load(w, transposed ? (t * g.cg + lane % g.cg) * g.C + base + c
                                               : (t * g.cg + c) * g.C + lane);
            p[(((b * 3 + ty) * g.cg + c) * 3 + tx) * kW + q] = v;
          }
  return p;
}

// A worker's scratch for packed rows, reused across units.
float* Scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// Forward and input gradient: one unit = one output row of one image, all groups. The (up to 3)
// input rows are packed once for all groups, then each output block sweeps the row.
// rows(oy, ty) gives the input row read through kernel row ty (or -1).
template <typename V, int MODE, typename Raw, typename RowOf>
void Sweep(OpKernelContext* ctx, const Geometry& g, int64_t h_in, int64_t w_in, int64_t h_out,
           int64_t w_out, const Raw* in, const float* wp, Raw* out, RowOf rows) {
  const int64_t blocks = V::Blocks(g.C), L = Reach<MODE>(w_out, w_in), row = blocks * L * V::kCol;
  const int slices = g.slices();
  Shard(ctx, g.N * h_out, w_out * g.C * 9 * g.cg * 2 / (MODE == 2 ? 4 : 1), [&](int64_t u) {
    const int64_t n = u / h_out, oy = u % h_out;
    float* packed = Scratch(3 * row);
    const float* prow_all[3];
    int tys[3], nr = 0;
    for (int ty = 0; ty < 3; ++ty) {
      const int64_t iy = rows(oy, ty);
      if (iy < 0) continue;
      float* dst = packed + nr * row;
      PackRow<V>(dst, in + ((n * h_in + iy) * w_in) * g.C, g.C, w_in, L, 1);
      prow_all[nr] = dst;
      tys[nr++] = ty;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const float* prow[3];
      const float* wrow[3];
      for (int r = 0; r < nr; ++r) {
        prow[r] = prow_all[r] + V::InputBlock(b, g.cg, L);
        wrow[r] = wp + (b * 3 + tys[r]) * g.cg * 3 * V::kWidth;
      }
      Raw* o = out + ((n * h_out + oy) * w_out) * g.C + b * V::kWidth;
      RowSweep<V, MODE>(prow, wrow, nr, slices, L, w_out, o, g.C,
                        std::min<int64_t>(V::kWidth, g.C - b * V::kWidth));
    }
  });
}

template <typename V, typename Raw>
void Forward(OpKernelContext* ctx, const Geometry& g, const Raw* x, const Raw* w, Raw* y) {
  const std::vector<float> wp = PackKernel<V>(g, w, /*transposed=*/false, /*flip=*/false);
  auto rows = [&](int64_t oy, int ty) {
    const int64_t iy = g.s * oy + ty - 1;
    return iy >= 0 && iy < g.H ? iy : int64_t{-1};
  };
  if (g.s == 1) {
    Sweep<V, 0>(ctx, g, g.H, g.W, g.Ho, g.Wo, x, wp.data(), y, rows);
  } else {
    Sweep<V, 1>(ctx, g, g.H, g.W, g.Ho, g.Wo, x, wp.data(), y, rows);
  }
}

// dx row qy reads dy row qy + ty - 1 through the flipped kernel (stride 1), or dy row
// (qy + 1 - ty) / 2 where that is whole (stride 2).
template <typename V, typename Raw>
void GradInput(OpKernelContext* ctx, const Geometry& g, const Raw* dy, const Raw* w, Raw* dx) {
  const std::vector<float> wp = PackKernel<V>(g, w, /*transposed=*/true, /*flip=*/g.s == 1);
  if (g.s == 1) {
    Sweep<V, 0>(ctx, g, g.Ho, g.Wo, g.H, g.W, dy, wp.data(), dx, [&](int64_t qy, int ty) {
      const int64_t py = qy + ty - 1;
      return py >= 0 && py < g.Ho ? py : int64_t{-1};
    });
  } else {
    Sweep<V, 2>(ctx, g, g.Ho, g.Wo, g.H, g.W, dy, wp.data(), dx, [&](int64_t qy, int ty) {
      const int64_t t = qy + 1 - ty;
      return t >= 0 && t % 2 == 0 && t / 2 < g.Ho ? t / 2 : int64_t{-1};
    });
  }
}

// dW[ty, tx, i, o] over one packed x row (NI input-role channels) and one packed dy row (an
// output block): acc[tx][i] += x[s*k + tx - 1, i] dy[k]. At stride 1 each x column pairs with 3
// dy columns (a sliding window of 3 dy vectors in registers); at stride 2 even columns pair with
// two, odd ones with one. Y8 takes NI = 3: 9 accumulators + 3 dy + 1 broadcast fit the 16 ymm
// registers of AVX2 without spills, and 9 independent chains cover the FMA latency; Z16 takes
// NI = 8 (24 of AVX-512's 32 registers), so each dy vector feeds 24 FMAs.
template <typename V, int S, int NI>
inline __attribute__((always_inline)) void KernelRow(typename V::T (&acc)[3][NI], const float* xp,
                                                     const float* dyp, int64_t w_out) {
  using T = typename V::T;
  constexpr int kC = V::kCol, kI = V::kIStep;
  if (S == 1) {
    T d1 = T{}, d2 = T{};  // dy[c - 1], dy[c - 2]: x column c (packed) pairs with dy c, c-1, c-2
    for (int64_t c = 0; c < w_out + 2; ++c) {
      const T d0 = c < w_out ? V::Load(dyp + c * kC) : T{};
      const float* x = xp + c * kC;
      for (int i = 0; i < NI; ++i) {
        const auto b = V::Bcast(x + i * kI);
        acc[0][i] += b * d0;
        acc[1][i] += b * d1;
        acc[2][i] += b * d2;
      }
      d2 = d1;
      d1 = d0;
    }
  } else {
    T dprev = T{};  // packed x columns 2k, 2k + 1, 2k + 2 pair with dy[k] through tx 0, 1, 2
    for (int64_t k = 0; k <= w_out; ++k) {
      const T d = k < w_out ? V::Load(dyp + k * kC) : T{};
      const float* x0 = xp + 2 * k * kC;
      for (int i = 0; i < NI; ++i) {
        const auto b0 = V::Bcast(x0 + i * kI), b1 = V::Bcast(x0 + kC + i * kI);
        acc[0][i] += b0 * d;
        acc[2][i] += b0 * dprev;
        acc[1][i] += b1 * d;
      }
      dprev = d;
    }
  }
}

// All rows of a unit into dW[ty, :, i0 .. i0 + NI, the block's nch channels] (accumulators in
// registers; dst points at tx = 0, i0).
template <typename V, int S, int NI>
void KernelBlock(float* dst, int64_t cg, int64_t C, const float* const* xrows, const float* const* drows,
                 int nrows, int64_t w_out, int64_t nch) {
  typename V::T acc[3][NI];
  for (int tx = 0; tx < 3; ++tx)
    for (int i = 0; i < NI; ++i) acc[tx][i] = V::LoadNat(dst + (tx * cg + i) * C, nch);
  for (int r = 0; r < nrows; ++r) KernelRow<V, S, NI>(acc, xrows[r], drows[r], w_out);
  for (int tx = 0; tx < 3; ++tx)
    for (int i = 0; i < NI; ++i) V::StoreNat(dst + (tx * cg + i) * C, acc[tx][i], nch);
}

// Kernel gradient: units of (image, block of output rows), in a few shards with their own
// partial sums (summed at the end). Per unit the dy rows and the x rows they read are packed
// once (all groups); every (ty, output block, input roles) keeps its accumulators in registers
// over the whole block of rows: Y8 pairs each input slice of a group with each output slice,
// three input channels at a time; Z16 (group width 8) takes a pair of groups and all 8 inputs.
template <typename V, typename Raw>
void GradKernel(OpKernelContext* ctx, const Geometry& g, const Raw* dy, const Raw* x, Raw* dw) {
  const int64_t blocks = V::Blocks(g.C), Cp = blocks * V::kCol, kw = 9 * g.cg * g.C;
  // x columns read: -1 .. s * Wo (packed 0 .. s * Wo + 1)
  const int64_t Lx = std::max(g.W + 1, g.s * g.Wo + 2), Ld = g.Wo;
  // Rows per unit: >= 48 dy pixels (the accumulators' loads and stores amortized) while the
  // packed rows stay within ~256 KB (L2).
  const int64_t fit = (65536 / Cp - 2 * Lx) / (g.s * Lx + Ld);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>({g.Ho, (48 + g.Wo - 1) / g.Wo, 64, fit}));
  const int64_t per_image = (g.Ho + rows - 1) / rows, units = g.N * per_image;
  const int64_t x_rows = g.s * rows + 2;
  const int threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
  const int64_t shards = std::max<int64_t>(1, std::min<int64_t>(units, 2 * threads));
  std::vector<float> partial(shards * kw, 0.0f);
  Shard(ctx, shards, units / shards * rows * g.Wo * kw * 2, [&](int64_t sh) {
    float* acc_out = &partial[sh * kw];
    float* xpk = Scratch((x_rows * Lx + rows * Ld) * Cp);  // [row][blocks][L][kCol] each
    float* dpk = xpk + x_rows * Lx * Cp;
    for (int64_t u = units * sh / shards, u1 = units * (sh + 1) / shards; u < u1; ++u) {
      const int64_t n = u / per_image, oy0 = (u % per_image) * rows;
      const int64_t oy1 = std::min(g.Ho, oy0 + rows), iy0 = g.s * oy0 - 1;
      for (int64_t r = 0; r < oy1 - oy0; ++r)
        PackRow<V>(dpk + r * Ld * Cp, dy + ((n * g.Ho + oy0 + r) * g.Wo) * g.C, g.C, g.Wo, Ld, 0);
      const int64_t nx = std::min(x_rows, g.s * (oy1 - oy0 - 1) + 3);
      for (int64_t r = 0; r < nx; ++r) {
        const int64_t iy = iy0 + r;
        if (iy >= 0 && iy < g.H) PackRow<V>(xpk + r * Lx * Cp, x + ((n * g.H + iy) * g.W) * g.C, g.C, g.W, Lx, 1);
      }
      for (int ty = 0; ty < 3; ++ty) {
        const float* xr[64];  // the unit's (x row, dy row) pairs through kernel row ty
        const float* dr[64];
        int nr = 0;
        for (int64_t r = 0; r < oy1 - oy0; ++r) {
          const int64_t iy = g.s * (oy0 + r) + ty - 1;
          if (iy < 0 || iy >= g.H) continue;
          xr[nr] = xpk + (iy - iy0) * Lx * Cp;
          dr[nr++] = dpk + r * Ld * Cp;
        }
        const float* xs[64];
        const float* ds[64];
        if constexpr (std::is_same_v<V, Y8>) {
          const int slices = g.slices();
          for (int64_t ch = 0; ch < g.C; ch += g.cg)
            for (int si = 0; si < slices; ++si)
              for (int so = 0; so < slices; ++so)
                for (int i0 = 0; i0 < 8; i0 += 3) {  // channels {0, 1, 2}, {3, 4, 5}, {6, 7}
                  for (int r = 0; r < nr; ++r) {
                    xs[r] = xr[r] + (ch + si * 8) * Lx + i0;
                    ds[r] = dr[r] + (ch + so * 8) * Ld;
                  }
                  float* dst = acc_out + ((ty * 3) * g.cg + si * 8 + i0) * g.C + ch + so * 8;
                  if (g.s == 1) {
                    if (i0 < 6) KernelBlock<Y8, 1, 3>(dst, g.cg, g.C, xs, ds, nr, g.Wo, 8);
                    else KernelBlock<Y8, 1, 2>(dst, g.cg, g.C, xs, ds, nr, g.Wo, 8);
                  } else {
                    if (i0 < 6) KernelBlock<Y8, 2, 3>(dst, g.cg, g.C, xs, ds, nr, g.Wo, 8);
                    else KernelBlock<Y8, 2, 2>(dst, g.cg, g.C, xs, ds, nr, g.Wo, 8);
                  }
                }
        } else {
          for (int64_t b = 0; b < blocks; ++b) {
            for (int r = 0; r < nr; ++r) {
              xs[r] = xr[r] + b * Lx * V::kCol;
              ds[r] = dr[r] + b * Ld * V::kCol;
            }
            float* dst = acc_out + (ty * 3) * g.cg * g.C + b * V::kWidth;
            const int64_t nch = std::min<int64_t>(V::kWidth, g.C - b * V::kWidth);
            if (g.s == 1) KernelBlock<V, 1, 8>(dst, g.cg, g.C, xs, ds, nr, g.Wo, nch);
            else KernelBlock<V, 2, 8>(dst, g.cg, g.C, xs, ds, nr, g.Wo, nch);
          }
        }
      }
    }
  });
  for (int64_t sh = 1; sh < shards; ++sh) {
    const float* p = &partial[sh * kw];
    for (int64_t e = 0; e < kw; ++e) partial[e] += p[e];
  }
  for (int64_t e = 0; e < kw; ++e) Store(dw, e, partial[e]);
}

// Z16 (512-bit, two groups per vector) where the build has AVX-512 and the group width is 8,
// unless the op's vector_bits attr asks for 256; Y8 otherwise.
bool Wide(const Geometry& g, int vector_bits) {
#ifdef __AVX512F__
  return g.cg == 8 && vector_bits != 256;
#else
  return false;
#endif
}

// Both kernels read the "stride" and "vector_bits" attrs.
class StridedKernel : public OpKernel {
 public:
  explicit StridedKernel(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("stride", &stride_));
    OP_REQUIRES_OK(c, c->GetAttr("vector_bits", &vector_bits_));
    OP_REQUIRES(c, vector_bits_ == 0 || vector_bits_ == 256,
                errors::InvalidArgument("vector_bits must be 0 (widest) or 256, got ", vector_bits_));
  }

 protected:
  int stride_, vector_bits_;
};

template <typename Raw>
class GroupedConv3x3Op : public StridedKernel {
 public:
  using StridedKernel::StridedKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& k = ctx->input(1);
    Geometry g;
    ReadGeometry(ctx, x, k, stride_, &g);
    if (!ctx->status().ok()) return;
    Tensor* y;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.N, g.Ho, g.Wo, g.C}), &y));
    if (y->NumElements() == 0) return;
    if (Wide(g, vector_bits_)) {
      Forward<Z16>(ctx, g, In<Raw>(x), In<Raw>(k), Out<Raw>(y));
    } else {
      Forward<Y8>(ctx, g, In<Raw>(x), In<Raw>(k), Out<Raw>(y));
    }
  }
};

template <typename Raw>
class GroupedConv3x3GradOp : public StridedKernel {
 public:
  using StridedKernel::StridedKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& k = ctx->input(2);
    Geometry g;
    ReadGeometry(ctx, x, k, stride_, &g);
    if (!ctx->status().ok()) return;
    OP_REQUIRES(ctx, dy.shape() == TensorShape({g.N, g.Ho, g.Wo, g.C}),
                errors::InvalidArgument("dy ", dy.shape().DebugString(), " does not match x ",
                                        x.shape().DebugString(), " at stride ", stride_));
    Tensor *dx, *dk;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, k.shape(), &dk));
    if (x.NumElements() == 0) {
      std::memset(Out<Raw>(dk), 0, dk->NumElements() * sizeof(Raw));
      return;
    }
    if (Wide(g, vector_bits_)) {
      GradInput<Z16>(ctx, g, In<Raw>(dy), In<Raw>(k), Out<Raw>(dx));
      GradKernel<Z16>(ctx, g, In<Raw>(dy), In<Raw>(x), Out<Raw>(dk));
    } else {
      GradInput<Y8>(ctx, g, In<Raw>(dy), In<Raw>(k), Out<Raw>(dx));
      GradKernel<Y8>(ctx, g, In<Raw>(dy), In<Raw>(x), Out<Raw>(dk));
    }
  }
};

}  // namespace

SEER_REGISTER_BOTH("SeerGroupedConv3x3", GroupedConv3x3Op);
SEER_REGISTER_BOTH("SeerGroupedConv3x3Grad", GroupedConv3x3GradOp);

}  // namespace seer_tf
