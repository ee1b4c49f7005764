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

template <typename T>
class ConvGpuOp : public SparseAsyncOpKernel {
 public:
  explicit ConvGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), validate_map_(GetValidateMap(context)) {}

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
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
    if (!CheckConvKernel(context, kernel, map.num_offsets, features, 1,
                         "features")) {
      return done();
    }
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes = gpu::ConvWorkspaceBytes<T>(
        map.num_offsets, n_out, c_in, c_out, /*transpose_weights=*/false);
    if (!AllocateOutput(context, 0, {n_out, c_out}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::Conv<T>(
        features.flat<T>().data(), n_in, c_in, kernel.flat<T>().data(), c_out,
        /*transpose_weights=*/false, map, n_out, output->flat<T>().data(),
        BytesOf(workspace), bytes, StreamOf(context));
    if (Failed(context, status)) return done();
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

template <typename T>
class ConvBackpropInputGpuOp : public SparseAsyncOpKernel {
 public:
  explicit ConvBackpropInputGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), validate_map_(GetValidateMap(context)) {}

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
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
    if (!CheckConvKernel(context, kernel, map.num_offsets, grad, 2,
                         "grad_output")) {
      return done();
    }
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes = gpu::ConvBackpropInputWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, n_in, c_in, c_out);
    if (!AllocateOutput(context, 0, {n_in, c_in}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::ConvBackpropInput<T>(
        grad.flat<T>().data(), n_out, c_out, kernel.flat<T>().data(), c_in, map,
        n_in, output->flat<T>().data(), BytesOf(workspace), bytes,
        StreamOf(context), MapCheckOrNull(check));
    if (Failed(context, status)) return done();
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

template <typename T>
class ConvBackpropKernelGpuOp : public SparseAsyncOpKernel {
 public:
  explicit ConvBackpropKernelGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), validate_map_(GetValidateMap(context)) {}

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
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
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes = gpu::ConvBackpropKernelWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, c_in, c_out);
    if (!AllocateOutput(context, 0, {map.num_offsets, c_in, c_out}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::ConvBackpropKernel<T>(
        features.flat<T>().data(), n_in, c_in, grad.flat<T>().data(), n_out,
        c_out, map, output->flat<T>().data(), BytesOf(workspace), bytes,
        StreamOf(context));
    if (Failed(context, status)) return done();
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

#define SPARSE_OPS_REGISTER_GPU(T)                             \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>Conv")               \
                              .Device(DEVICE_GPU)              \
                              .TypeConstraint<T>("T")          \
                              .HostMemory("num_out_rows"),     \
                          ConvGpuOp<T>);                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropInput")  \
                              .Device(DEVICE_GPU)              \
                              .TypeConstraint<T>("T")          \
                              .HostMemory("num_in_rows"),      \
                          ConvBackpropInputGpuOp<T>);          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropKernel") \
                              .Device(DEVICE_GPU)              \
                              .TypeConstraint<T>("T"),         \
                          ConvBackpropKernelGpuOp<T>);
SPARSE_OPS_REGISTER_GPU(float)
SPARSE_OPS_REGISTER_GPU(double)
#undef SPARSE_OPS_REGISTER_GPU

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
