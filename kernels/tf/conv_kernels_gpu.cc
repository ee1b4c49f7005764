// GPU kernels of the convolution ops: validate shapes, allocate, call the
// CUDA core (kernels/cuda) on TensorFlow's stream. A kernel map may come
// from a user, so its values are checked on the device beside the
// convolution (which reads only in-range rows whatever the map holds); the
// check's result is read back once, after the stream has run, and fails
// the op with the CPU kernel's message.
#if GOOGLE_CUDA

#include "kernels/cuda/core_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

namespace {

// The kernel map inputs at `first` as the core's view; shapes checked.
gpu::DeviceKernelMap DeviceMap(OpKernelContext* context, int first) {
  const Tensor& splits = context->input(first);
  const Tensor& in_rows = context->input(first + 1);
  return gpu::DeviceKernelMap{splits.flat<int64_t>().data(),
                              in_rows.flat<int32_t>().data(),
                              context->input(first + 2).flat<int32_t>().data(),
                              splits.dim_size(0) - 1, in_rows.dim_size(0)};
}

// Starts the device check of `map` against the row counts; the caller
// then enqueues its own work and calls FinishMapCheck.
struct MapCheck {
  Tensor device, host;
};

bool StartMapCheck(OpKernelContext* context, const gpu::DeviceKernelMap& map,
                   int64_t n_in, int64_t n_out, MapCheck* check) {
  if (!AllocateDeviceBytes(context, sizeof(gpu::KernelMapCheck), &check->device) ||
      !AllocateHostStruct<gpu::KernelMapCheck>(context, &check->host)) {
    return false;
  }
  const Status status = gpu::CheckKernelMap(
      map, n_in, n_out, static_cast<gpu::KernelMapCheck*>(BytesOf(check->device)),
      StreamOf(context));
  if (!status.ok()) context->CtxFailure(ToTfStatus(status));
  return status.ok();
}

// Reads the check back after the work enqueued so far and ends the op.
void FinishMapCheck(OpKernelContext* context, MapCheck check,
                    const gpu::DeviceKernelMap& map, int64_t n_in, int64_t n_out,
                    tensorflow::AsyncOpKernel::DoneCallback done) {
  const Status copied = gpu::CopyToHost(BytesOf(check.host), BytesOf(check.device),
                                        sizeof(gpu::KernelMapCheck), StreamOf(context));
  if (!copied.ok()) {
    context->CtxFailure(ToTfStatus(copied));
    done();
    return;
  }
  const int64_t pairs = map.num_pairs;
  ThenOnHost(context, [context, check, pairs, n_in, n_out, done]() mutable {
    const auto* result = static_cast<const gpu::KernelMapCheck*>(BytesOf(check.host));
    const Status status = gpu::KernelMapCheckStatus(*result, pairs, n_in, n_out);
    if (!status.ok()) context->CtxFailure(ToTfStatus(status));
    done();
  });
}

}  // namespace

template <typename T>
class ConvGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context, DoneCallback done) override {
    const Tensor& features = context->input(0);
    const Tensor& kernel = context->input(1);
    int64_t n_out;
    if (!CheckMatrix(context, features, "features") ||
        !GetRowCount(context, 5, "num_out_rows", &n_out) ||
        !CheckKernelMapShapes(context, 2)) {
      return done();
    }
    const gpu::DeviceKernelMap map = DeviceMap(context, 2);
    const int64_t n_in = features.dim_size(0);
    if (!CheckConvKernel(context, kernel, map.num_offsets, features, 1, "features")) {
      return done();
    }
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    MapCheck check;
    const size_t bytes = gpu::ConvWorkspaceBytes<T>(map.num_offsets, n_out, c_in,
                                                    c_out, /*transpose_weights=*/false);
    if (!AllocateOutput(context, 0, {n_out, c_out}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::Conv<T>(
        features.flat<T>().data(), n_in, c_in, kernel.flat<T>().data(), c_out,
        /*transpose_weights=*/false, map, n_out, output->flat<T>().data(),
        BytesOf(workspace), bytes, StreamOf(context));
    if (!status.ok()) {
      context->CtxFailure(ToTfStatus(status));
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out, std::move(done));
  }
};

template <typename T>
class ConvBackpropInputGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context, DoneCallback done) override {
    const Tensor& grad = context->input(0);
    const Tensor& kernel = context->input(1);
    int64_t n_in;
    if (!CheckMatrix(context, grad, "grad_output") ||
        !GetRowCount(context, 5, "num_in_rows", &n_in) ||
        !CheckKernelMapShapes(context, 2)) {
      return done();
    }
    const gpu::DeviceKernelMap map = DeviceMap(context, 2);
    const int64_t n_out = grad.dim_size(0);
    if (!CheckConvKernel(context, kernel, map.num_offsets, grad, 2, "grad_output")) {
      return done();
    }
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    MapCheck check;
    const size_t bytes = gpu::ConvBackpropInputWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, n_in, c_in, c_out);
    if (!AllocateOutput(context, 0, {n_in, c_in}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::ConvBackpropInput<T>(
        grad.flat<T>().data(), n_out, c_out, kernel.flat<T>().data(), c_in, map,
        n_in, output->flat<T>().data(), BytesOf(workspace), bytes, StreamOf(context));
    if (!status.ok()) {
      context->CtxFailure(ToTfStatus(status));
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out, std::move(done));
  }
};

template <typename T>
class ConvBackpropKernelGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context, DoneCallback done) override {
    const Tensor& features = context->input(0);
    const Tensor& grad = context->input(1);
    if (!CheckMatrix(context, features, "features") ||
        !CheckMatrix(context, grad, "grad_output") ||
        !CheckKernelMapShapes(context, 2)) {
      return done();
    }
    const gpu::DeviceKernelMap map = DeviceMap(context, 2);
    const int64_t n_in = features.dim_size(0), n_out = grad.dim_size(0);
    const int64_t c_in = features.dim_size(1), c_out = grad.dim_size(1);
    Tensor* output = nullptr;
    Tensor workspace;
    MapCheck check;
    const size_t bytes = gpu::ConvBackpropKernelWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, c_in, c_out);
    if (!AllocateOutput(context, 0, {map.num_offsets, c_in, c_out}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::ConvBackpropKernel<T>(
        features.flat<T>().data(), n_in, c_in, grad.flat<T>().data(), n_out, c_out,
        map, output->flat<T>().data(), BytesOf(workspace), bytes, StreamOf(context));
    if (!status.ok()) {
      context->CtxFailure(ToTfStatus(status));
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out, std::move(done));
  }
};

#define SPARSE_OPS_REGISTER_GPU(T)                                          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>Conv")                            \
                              .Device(DEVICE_GPU)                           \
                              .TypeConstraint<T>("T")                       \
                              .HostMemory("num_out_rows"),                  \
                          ConvGpuOp<T>);                                    \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropInput")               \
                              .Device(DEVICE_GPU)                           \
                              .TypeConstraint<T>("T")                       \
                              .HostMemory("num_in_rows"),                   \
                          ConvBackpropInputGpuOp<T>);                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropKernel")              \
                              .Device(DEVICE_GPU)                           \
                              .TypeConstraint<T>("T"),                      \
                          ConvBackpropKernelGpuOp<T>);
SPARSE_OPS_REGISTER_GPU(float)
SPARSE_OPS_REGISTER_GPU(double)
#undef SPARSE_OPS_REGISTER_GPU

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
