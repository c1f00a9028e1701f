// Shared pieces of seer_tf's CPU kernels: bf16 <-> f32 in registers, pixel work units, sharding.
#ifndef SEER_TF_OPS_KERNEL_UTIL_H_
#define SEER_TF_OPS_KERNEL_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace seer_tf {

inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even, as TF casts (activations here are finite)
  p[i] = static_cast<uint16_t>(u >> 16);
}

// A tensor's elements as float (float32) or uint16_t (bfloat16 bits).
template <typename Raw>
const Raw* In(const tensorflow::Tensor& t) {
  return reinterpret_cast<const Raw*>(t.tensor_data().data());
}
template <typename Raw>
Raw* Out(tensorflow::Tensor* t) {
  return reinterpret_cast<Raw*>(const_cast<char*>(t->tensor_data().data()));
}

constexpr int64_t kBlock = 2048;  // pixels per work unit: partial sums stay in float

// Work units: blocks of <= kBlock pixels that never straddle two images, so a unit knows its
// image (for the SE squeeze and its gradient).
struct Units {
  int64_t hw, per_image, count;
  Units(int64_t n, int64_t hw_) : hw(hw_), per_image(std::max<int64_t>(1, (hw_ + kBlock - 1) / kBlock)),
                                  count(n * per_image) {}
  int64_t image(int64_t u) const { return u / per_image; }
  int64_t begin(int64_t u) const { return image(u) * hw + (u % per_image) * kBlock; }
  int64_t end(int64_t u) const { return std::min(begin(u) + kBlock, (image(u) + 1) * hw); }
};

template <typename S>
void Shard(tensorflow::OpKernelContext* ctx, int64_t units, int64_t cost, const S& fn) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(units, cost, [&](int64_t a, int64_t b) { for (int64_t u = a; u < b; ++u) fn(u); });
}

}  // namespace seer_tf

// A kernel class template OP<Raw> for T = float32 and bfloat16 on CPU.
#define SEER_REGISTER_BOTH(NAME, OP)                                                           \
  REGISTER_KERNEL_BUILDER(                                                                     \
      Name(NAME).Device(::tensorflow::DEVICE_CPU).TypeConstraint<float>("T"), OP<float>);      \
  REGISTER_KERNEL_BUILDER(Name(NAME).Device(::tensorflow::DEVICE_CPU)                          \
                              .TypeConstraint<::tensorflow::bfloat16>("T"),                    \
                          OP<uint16_t>)

#endif  // SEER_TF_OPS_KERNEL_UTIL_H_
