// The TensorFlow side of the GPU kernels (GOOGLE_CUDA builds only): the
// stream TensorFlow gives an op, temporaries from its allocator, and the one
// host read an op may make (a device struct copied back, then the rest of
// the op on a TensorFlow callback thread, as TF's own Where op does).
// Compiled by the host compiler; the CUDA work is in kernels/cuda.
#ifndef SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_
#define SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_

#if GOOGLE_CUDA

#include <functional>
#include <utility>

#include "kernels/cuda/core_gpu.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/common_runtime/device/device_event_mgr.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/stream_executor.h"

namespace sparse_ops {

inline gpu::GpuStream StreamOf(tensorflow::OpKernelContext* context) {
  return static_cast<gpu::GpuStream>(
      context->op_device_context()->stream()->platform_specific_handle().stream);
}

// A device temporary of `bytes` bytes (the cores' workspaces and result
// structs); TensorFlow's GPU allocator orders its reuse on the op's stream.
inline bool AllocateDeviceBytes(tensorflow::OpKernelContext* context, int64_t bytes,
                                tensorflow::Tensor* out) {
  return AllocateTemp(context, tensorflow::DT_INT8, {bytes > 0 ? bytes : 1}, out);
}

inline void* BytesOf(tensorflow::Tensor& t) { return t.flat<int8_t>().data(); }

// Page-locked host memory for a struct the device writes back.
template <typename S>
bool AllocateHostStruct(tensorflow::OpKernelContext* context, tensorflow::Tensor* out) {
  tensorflow::AllocatorAttributes attributes;
  attributes.set_on_host(true);
  attributes.set_gpu_compatible(true);
  const absl::Status status = context->allocate_temp(
      tensorflow::DT_INT8, tensorflow::TensorShape({static_cast<int64_t>(sizeof(S))}),
      out, attributes);
  if (!status.ok()) context->CtxFailure(status);
  return status.ok();
}

// Runs `then` on a TensorFlow callback thread once everything enqueued on
// the op's stream so far has finished, with the op's GPU context active.
// `then` must not block; it ends the op (calls done).
inline void ThenOnHost(tensorflow::OpKernelContext* context, std::function<void()> then) {
  auto* stream = context->op_device_context()->stream();
  context->device()->tensorflow_accelerator_device_info()->event_mgr->ThenExecute(
      stream, [stream, then = std::move(then)]() {
        auto activation = stream->parent()->Activate();
        then();
      });
}

// An async GPU kernel that, like SparseOpKernel, turns a host
// std::bad_alloc into ResourceExhausted.
class SparseAsyncOpKernel : public tensorflow::AsyncOpKernel {
 public:
  using tensorflow::AsyncOpKernel::AsyncOpKernel;

  void ComputeAsync(tensorflow::OpKernelContext* context, DoneCallback done) final {
    try {
      ComputeAsyncChecked(context, done);
    } catch (const std::bad_alloc&) {
      context->CtxFailure(absl::ResourceExhaustedError(
          name() + ": out of host memory for a temporary buffer"));
      done();
    }
  }

 protected:
  // Must call done exactly once, on every path.
  virtual void ComputeAsyncChecked(tensorflow::OpKernelContext* context,
                                   DoneCallback done) = 0;
};

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
#endif  // SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_
