// y = x * scale[n, c] on NHWC activations, forward and backward, for CPU.
//
// Why: the SE excitation multiplies b's output before conv c wherever c does not fold it into
// its kernel (RegNetY stages 3 and 4). TF does that as a broadcasting Mul forward and, backward,
// a Mul for dx plus a Mul and a Sum over H, W for dscale; here the gradient reads dy and x once
// for both. float32 arithmetic; bfloat16 converted in registers.
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "kernel_util.h"

namespace seer_tf {
using namespace tensorflow;  // NOLINT

REGISTER_OP("SeerChannelScale")
    .Input("x: T")
    .Input("scale: T")  // (N, C)
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("SeerChannelScaleGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("scale: T")
    .Output("dx: T")
    .Output("dscale: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    });

namespace {

template <typename Raw>
class ChannelScaleOp : public OpKernel {
 public:
  explicit ChannelScaleOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& s = ctx->input(1);
    OP_REQUIRES(ctx, x.dims() == 4, errors::InvalidArgument("x must be NHWC"));
    const int64_t N = x.dim_size(0), C = x.dim_size(3), HW = x.dim_size(1) * x.dim_size(2);
    OP_REQUIRES(ctx, s.dims() == 2 && s.dim_size(0) == N && s.dim_size(1) == C,
                errors::InvalidArgument("scale must be (N, C) = (", N, ", ", C, ")"));
    Tensor* y;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const Raw* xp = In<Raw>(x);
    const Raw* sp = In<Raw>(s);
    Raw* yp = Out<Raw>(y);
    std::vector<float> sf(N * C);
    for (int64_t i = 0; i < N * C; ++i) sf[i] = Load(sp, i);
    const Units un(N, HW);
    Shard(ctx, un.count, std::min(kBlock, HW) * C * 3, [&](int64_t u) {
      const float* k = &sf[un.image(u) * C];
      for (int64_t p = un.begin(u), p1 = un.end(u); p < p1; ++p) {
        const int64_t o = p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) Store(yp, o + c, Load(xp, o + c) * k[c]);
      }
    });
  }
};

template <typename Raw>
class ChannelScaleGradOp : public OpKernel {
 public:
  explicit ChannelScaleGradOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& s = ctx->input(2);
    OP_REQUIRES(ctx, x.dims() == 4 && dy.shape() == x.shape(),
                errors::InvalidArgument("dy and x must be NHWC of one shape"));
    const int64_t N = x.dim_size(0), C = x.dim_size(3), HW = x.dim_size(1) * x.dim_size(2);
    OP_REQUIRES(ctx, s.dims() == 2 && s.dim_size(0) == N && s.dim_size(1) == C,
                errors::InvalidArgument("scale must be (N, C)"));
    Tensor *dx, *ds;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, s.shape(), &ds));
    const Raw* dyp = In<Raw>(dy);
    const Raw* xp = In<Raw>(x);
    const Raw* sp = In<Raw>(s);
    Raw* dxp = Out<Raw>(dx);
    Raw* dsp = Out<Raw>(ds);
    std::vector<float> sf(N * C);
    for (int64_t i = 0; i < N * C; ++i) sf[i] = Load(sp, i);
    const Units un(N, HW);
    std::vector<float> part(un.count * C, 0.f);
    Shard(ctx, un.count, std::min(kBlock, HW) * C * 5, [&](int64_t u) {
      const float* k = &sf[un.image(u) * C];
      float* acc = &part[u * C];
      for (int64_t p = un.begin(u), p1 = un.end(u); p < p1; ++p) {
        const int64_t o = p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = Load(dyp, o + c);
          Store(dxp, o + c, g * k[c]);
          acc[c] += g * Load(xp, o + c);
        }
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        double a = 0;
        for (int64_t j = 0; j < un.per_image; ++j) a += part[(n * un.per_image + j) * C + c];
        Store(dsp, n * C + c, static_cast<float>(a));
      }
    }
  }
};

}  // namespace

SEER_REGISTER_BOTH("SeerChannelScale", ChannelScaleOp);
SEER_REGISTER_BOTH("SeerChannelScaleGrad", ChannelScaleGradOp);

}  // namespace seer_tf
