// What the CPU and GPU kernels of the depthwise convolution ops share: the
// checks of a kernel [K, C, M] against the map and the features.
#ifndef SPARSE_OPS_KERNELS_TF_DEPTHWISE_GLUE_H_
#define SPARSE_OPS_KERNELS_TF_DEPTHWISE_GLUE_H_

#include <string>

#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

// kernel [K, C, M] with K = num_offsets, C = `channels` (of `what`), and
// C * M within kMaxChannels.
inline bool CheckDepthwiseKernel(tensorflow::OpKernelContext* context,
                                 const tensorflow::Tensor& kernel,
                                 int64_t num_offsets, int64_t channels,
                                 const char* what) {
  if (kernel.dims() != 3 || kernel.dim_size(0) != num_offsets ||
      kernel.dim_size(1) != channels) {
    context->CtxFailure(absl::InvalidArgumentError(
        "kernel must be [K, C, M] = [" + std::to_string(num_offsets) + ", " +
        std::to_string(channels) +
        ", M] (K offsets of the map, C channels of " + what + "), got shape " +
        kernel.shape().DebugString()));
    return false;
  }
  if (kernel.dim_size(1) * kernel.dim_size(2) > kMaxChannels) {
    context->CtxFailure(absl::InvalidArgumentError(
        "kernel " + kernel.shape().DebugString() + " gives " +
        std::to_string(kernel.dim_size(1) * kernel.dim_size(2)) +
        " output channels; at most " + std::to_string(kMaxChannels) +
        " are supported"));
    return false;
  }
  return true;
}

// The multiplier input of the kernel gradient: a scalar >= 1 with
// grad_output's width = C * multiplier.
inline bool GetDepthwiseMultiplier(tensorflow::OpKernelContext* context,
                                   int index, int64_t channels,
                                   int64_t grad_width, int64_t* multiplier) {
  const tensorflow::Tensor& t = context->input(index);
  const int64_t m = t.dims() == 0 ? t.scalar<int64_t>()() : 0;
  // Divided, not multiplied: a hostile multiplier must not overflow.
  const bool fits =
      channels == 0 ? grad_width == 0
                    : grad_width % channels == 0 && grad_width / channels == m;
  if (t.dims() != 0 || m < 1 || !fits) {
    context->CtxFailure(absl::InvalidArgumentError(
        "multiplier must be a scalar M >= 1 with grad_output's " +
        std::to_string(grad_width) + " columns = " + std::to_string(channels) +
        " channels x M, got " +
        (t.dims() == 0 ? std::to_string(t.scalar<int64_t>()())
                       : t.shape().DebugString())));
    return false;
  }
  *multiplier = t.scalar<int64_t>()();
  return true;
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_TF_DEPTHWISE_GLUE_H_
