// Training-mode BatchNorm (+ ReLU) on NHWC activations, forward and backward, for CPU.
//
// Why: a RegNetY SwAV step on CPU is memory-bound. TF's path is oneDNN's BatchNorm, whose
// gradient takes no activation (a separate ReluGrad pass: read dz, y, write), and whose bfloat16
// kernels are slower per element than its float32 ones (and a generic loop for C % 16 != 0).
// These kernels read x once for the statistics (sums shifted by each channel's first value, so
// E[x^2] - E[x]^2 does not cancel), once more to normalize, and the gradient recomputes the
// ReLU mask from x:
//   forward  : read x; read x + write y       (float32: as fast as oneDNN's, both at bandwidth)
//   backward : read dz, x; read dz, x + write dx   (oneDNN + ReluGrad: 8 passes)
// Arithmetic is float32 throughout; bfloat16 tensors are converted in registers (round to
// nearest even on the way out, as TF's casts do).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/work_sharder.h"
#include "kernel_util.h"

namespace seer_tf {
using namespace tensorflow;  // NOLINT

REGISTER_OP("SeerBatchNormRelu")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("mean: float")
    .Output("inv_std: float")
    .Output("variance: float")  // unbiased, for the moving statistics (as FusedBatchNormV3)
    .Output("squeeze: float")   // (N, C) mean of y over H, W when spatial_mean, else (0,)
    .Attr("T: {float, bfloat16}")
    .Attr("epsilon: float")
    .Attr("relu: bool")
    .Attr("spatial_mean: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      auto ch = c->Dim(c->input(0), -1);
      for (int i = 1; i < 4; ++i) c->set_output(i, c->Vector(ch));
      bool spatial_mean;
      TF_RETURN_IF_ERROR(c->GetAttr("spatial_mean", &spatial_mean));
      c->set_output(4, spatial_mean ? c->Matrix(c->Dim(c->input(0), 0), ch) : c->Vector(0));
      return absl::OkStatus();
    });

REGISTER_OP("SeerBatchNormReluGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Input("dsqueeze: float")  // (N, C): gradient of mean(y over H, W), or (0,) for none
    .Output("dx: T")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("T: {float, bfloat16}")
    .Attr("relu: bool")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return absl::OkStatus();
    });

namespace {

template <typename Raw>
class BatchNormReluOp : public OpKernel {
 public:
  explicit BatchNormReluOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, c->GetAttr("relu", &relu_));
    OP_REQUIRES_OK(c, c->GetAttr("spatial_mean", &spatial_mean_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, x.dims() == 4, errors::InvalidArgument("x must be NHWC"));
    const int64_t C = x.dim_size(3), P = x.NumElements() / std::max<int64_t>(C, 1);
    OP_REQUIRES(ctx, ctx->input(1).NumElements() == C && ctx->input(2).NumElements() == C,
                errors::InvalidArgument("gamma/beta must have ", C, " elements"));
    OP_REQUIRES(ctx, P > 1, errors::InvalidArgument("BatchNorm needs more than one value per channel"));
    const int64_t N = x.dim_size(0), HW = N ? P / N : 0;
    Tensor *y, *mean_t, *inv_t, *var_t, *sq_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &inv_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({C}), &var_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
        4, spatial_mean_ ? TensorShape({N, C}) : TensorShape({0}), &sq_t));
    const Raw* xp = In<Raw>(x);
    Raw* yp = Out<Raw>(y);
    const float* gamma = ctx->input(1).flat<float>().data();
    const float* beta = ctx->input(2).flat<float>().data();

    std::vector<float> shift(C);
    for (int64_t c = 0; c < C; ++c) shift[c] = Load(xp, c);
    const Units un(N, HW);
    const int64_t units = un.count;
    std::vector<float> s1(units * C, 0.f), s2(units * C, 0.f);
    Shard(ctx, units, std::min(kBlock, HW) * C * 4, [&](int64_t u) {
      float* a = &s1[u * C];
      float* b = &s2[u * C];
      const float* k = shift.data();
      for (int64_t p = un.begin(u), p1 = un.end(u); p < p1; ++p) {
        const int64_t o = p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = Load(xp, o + c) - k[c];
          a[c] += d;
          b[c] += d * d;
        }
      }
    });
    std::vector<float> scale(C), offset(C);
    float* mean = mean_t->flat<float>().data();
    float* inv = inv_t->flat<float>().data();
    float* var = var_t->flat<float>().data();
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t u = 0; u < units; ++u) { a += s1[u * C + c]; b += s2[u * C + c]; }
      const double m = a / P;
      const double v = std::max(0.0, b / P - m * m);  // biased (normalization)
      mean[c] = static_cast<float>(shift[c] + m);
      inv[c] = static_cast<float>(1.0 / std::sqrt(v + epsilon_));
      var[c] = static_cast<float>(v * P / (P - 1));
      scale[c] = gamma[c] * inv[c];
      offset[c] = beta[c] - mean[c] * scale[c];
    }
    const bool relu = relu_, squeeze = spatial_mean_;
    std::vector<float> sy(squeeze ? units * C : 0, 0.f);  // per-unit sums of y (SE squeeze)
    Shard(ctx, units, std::min(kBlock, HW) * C * 6, [&](int64_t u) {
      const float* sc = scale.data();
      const float* of = offset.data();
      float* acc = squeeze ? &sy[u * C] : nullptr;
      for (int64_t p = un.begin(u), p1 = un.end(u); p < p1; ++p) {
        const int64_t o = p * C;
        if (squeeze) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float v = Load(xp, o + c) * sc[c] + of[c];
            if (relu) v = v > 0.f ? v : 0.f;
            Store(yp, o + c, v);
            acc[c] += v;
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float v = Load(xp, o + c) * sc[c] + of[c];
            if (relu) v = v > 0.f ? v : 0.f;
            Store(yp, o + c, v);
          }
        }
      }
    });
    if (squeeze) {
      float* sq = sq_t->flat<float>().data();
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
          double a = 0;
          for (int64_t j = 0; j < un.per_image; ++j) a += sy[(n * un.per_image + j) * C + c];
          sq[n * C + c] = static_cast<float>(a / HW);
        }
      }
    }
  }

 private:
  float epsilon_;
  bool relu_, spatial_mean_;
};

template <typename Raw>
class BatchNormReluGradOp : public OpKernel {
 public:
  explicit BatchNormReluGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("relu", &relu_));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 4 && dy.shape() == x.shape(),
                errors::InvalidArgument("dy and x must be NHWC of one shape"));
    const int64_t N = x.dim_size(0), C = x.dim_size(3), P = x.NumElements() / std::max<int64_t>(C, 1);
    const int64_t HW = N ? P / N : 0;
    const Tensor& dsq_t = ctx->input(6);
    const bool has_dsq = dsq_t.NumElements() > 0;
    OP_REQUIRES(ctx, !has_dsq || dsq_t.NumElements() == N * C,
                errors::InvalidArgument("dsqueeze must be (N, C) or empty"));
    Tensor *dx_t, *dg_t, *db_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &dg_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &db_t));
    const Raw* dyp = In<Raw>(dy);
    const Raw* xp = In<Raw>(x);
    Raw* dxp = Out<Raw>(dx_t);
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* beta = ctx->input(3).flat<float>().data();
    const float* mean = ctx->input(4).flat<float>().data();
    const float* inv = ctx->input(5).flat<float>().data();
    std::vector<float> dsq;
    if (has_dsq) {  // the squeeze's gradient, spread over the image's pixels
      dsq.assign(dsq_t.flat<float>().data(), dsq_t.flat<float>().data() + N * C);
      for (auto& v : dsq) v /= static_cast<float>(HW);
    }
    std::vector<float> scale(C), offset(C);
    for (int64_t c = 0; c < C; ++c) {
      scale[c] = gamma[c] * inv[c];
      offset[c] = beta[c] - mean[c] * scale[c];
    }
    const bool relu = relu_;
    // g = dy (+ dsq) where the BatchNorm output is > 0 (ReLU), recomputed from x.
    const Units un(N, HW);
    auto block = [&](int64_t u, auto&& body) {
      const float* extra = has_dsq ? &dsq[un.image(u) * C] : nullptr;
      for (int64_t p = un.begin(u), p1 = un.end(u); p < p1; ++p) body(p * C, extra);
    };
    const int64_t units = un.count;
    std::vector<float> sg(units * C, 0.f), sgx(units * C, 0.f);
    Shard(ctx, units, std::min(kBlock, HW) * C * 6, [&](int64_t u) {
      float* a = &sg[u * C];
      float* b = &sgx[u * C];
      const float *sc = scale.data(), *of = offset.data();
      block(u, [&](int64_t o, const float* extra) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xv = Load(xp, o + c);
          float g = Load(dyp, o + c) + (extra ? extra[c] : 0.f);
          if (relu && xv * sc[c] + of[c] <= 0.f) g = 0.f;
          a[c] += g;
          b[c] += g * (xv - mean[c]);
        }
      });
    });
    std::vector<float> k1(C), k2(C), k0(C);
    float* dgamma = dg_t->flat<float>().data();
    float* dbeta = db_t->flat<float>().data();
    for (int64_t c = 0; c < C; ++c) {
      double a = 0, b = 0;
      for (int64_t u = 0; u < units; ++u) { a += sg[u * C + c]; b += sgx[u * C + c]; }
      dbeta[c] = static_cast<float>(a);
      dgamma[c] = static_cast<float>(b * inv[c]);
      // dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat))
      const double s = static_cast<double>(gamma[c]) * inv[c];
      const double m2 = b / P * inv[c] * inv[c];
      k1[c] = static_cast<float>(s);
      k2[c] = static_cast<float>(-s * m2);
      k0[c] = static_cast<float>(-s * (a / P) + s * m2 * mean[c]);
    }
    Shard(ctx, units, std::min(kBlock, HW) * C * 8, [&](int64_t u) {
      const float *sc = scale.data(), *of = offset.data();
      const float *q1 = k1.data(), *q2 = k2.data(), *q0 = k0.data();
      block(u, [&](int64_t o, const float* extra) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xv = Load(xp, o + c);
          float g = Load(dyp, o + c) + (extra ? extra[c] : 0.f);
          if (relu && xv * sc[c] + of[c] <= 0.f) g = 0.f;
          Store(dxp, o + c, q1[c] * g + q2[c] * xv + q0[c]);
        }
      });
    });
  }

 private:
  bool relu_;
};

}  // namespace

SEER_REGISTER_BOTH("SeerBatchNormRelu", BatchNormReluOp);
SEER_REGISTER_BOTH("SeerBatchNormReluGrad", BatchNormReluGradOp);

}  // namespace seer_tf
