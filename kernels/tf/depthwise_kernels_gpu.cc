// GPU kernels of the depthwise convolution ops: validate shapes, allocate,
// call the CUDA core (kernels/cuda/depthwise_gpu.h) on TensorFlow's stream;
// a map from a user is checked beside the work, as for the convolution.
#if GOOGLE_CUDA

#include "kernels/cuda/depthwise_gpu.h"
#include "kernels/tf/depthwise_glue.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class DepthwiseConvGpuOp : public SparseAsyncOpKernel {
 public:
  explicit DepthwiseConvGpuOp(OpKernelConstruction* context)
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
    if (!CheckDepthwiseKernel(context, kernel, map.num_offsets,
                              features.dim_size(1), "features")) {
      return done();
    }
    const int64_t C = kernel.dim_size(1), M = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes =
        gpu::DepthwiseConvWorkspaceBytes(map.num_offsets, n_out);
    if (!AllocateOutput(context, 0, {n_out, C * M}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    if (Failed(context, gpu::DepthwiseConv<T>(
                            features.flat<T>().data(), n_in, C, M,
                            kernel.flat<T>().data(), map, n_out,
                            output->flat<T>().data(), BytesOf(workspace), bytes,
                            StreamOf(context)))) {
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

template <typename T>
class DepthwiseConvBackpropInputGpuOp : public SparseAsyncOpKernel {
 public:
  explicit DepthwiseConvBackpropInputGpuOp(OpKernelConstruction* context)
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
    if (kernel.dims() != 3 ||
        kernel.dim_size(1) * kernel.dim_size(2) != grad.dim_size(1)) {
      context->CtxFailure(absl::InvalidArgumentError(
          "kernel [K, C, M] must give grad_output's " +
          std::to_string(grad.dim_size(1)) + " columns as C x M, got shape " +
          kernel.shape().DebugString()));
      return done();
    }
    if (!CheckDepthwiseKernel(context, kernel, map.num_offsets,
                              kernel.dim_size(1), "grad_features")) {
      return done();
    }
    const int64_t C = kernel.dim_size(1), M = kernel.dim_size(2);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes =
        gpu::DepthwiseConvBackpropInputWorkspaceBytes(map.num_offsets, n_in);
    if (!AllocateOutput(context, 0, {n_in, C}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    if (Failed(context,
               gpu::DepthwiseConvBackpropInput<T>(
                   grad.flat<T>().data(), n_out, C, M, kernel.flat<T>().data(),
                   map, n_in, output->flat<T>().data(), BytesOf(workspace),
                   bytes, StreamOf(context), MapCheckOrNull(check)))) {
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

template <typename T>
class DepthwiseConvBackpropKernelGpuOp : public SparseAsyncOpKernel {
 public:
  explicit DepthwiseConvBackpropKernelGpuOp(OpKernelConstruction* context)
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
    const int64_t C = features.dim_size(1);
    int64_t M;
    if (!GetDepthwiseMultiplier(context, 5, C, grad.dim_size(1), &M))
      return done();
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes = gpu::DepthwiseConvBackpropKernelWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, C, M);
    if (!AllocateOutput(context, 0, {map.num_offsets, C, M}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    if (Failed(context,
               gpu::DepthwiseConvBackpropKernel<T>(
                   features.flat<T>().data(), n_in, C, M, grad.flat<T>().data(),
                   n_out, map, output->flat<T>().data(), BytesOf(workspace),
                   bytes, StreamOf(context)))) {
      return done();
    }
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
};

#define SPARSE_OPS_REGISTER(T)                                          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConv")               \
                              .Device(DEVICE_GPU)                       \
                              .TypeConstraint<T>("T")                   \
                              .HostMemory("num_out_rows"),              \
                          DepthwiseConvGpuOp<T>);                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConvBackpropInput")  \
                              .Device(DEVICE_GPU)                       \
                              .TypeConstraint<T>("T")                   \
                              .HostMemory("num_in_rows"),               \
                          DepthwiseConvBackpropInputGpuOp<T>);          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConvBackpropKernel") \
                              .Device(DEVICE_GPU)                       \
                              .TypeConstraint<T>("T")                   \
                              .HostMemory("multiplier"),                \
                          DepthwiseConvBackpropKernelGpuOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
