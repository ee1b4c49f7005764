// CPU kernels of the depthwise convolution ops: validate, allocate, call
// the core (kernels/core/depthwise.h).
#include "kernels/core/depthwise.h"
#include "kernels/core/kernel_map.h"
#include "kernels/tf/depthwise_glue.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class DepthwiseConvOp : public SparseOpKernel {
 public:
  using SparseOpKernel::SparseOpKernel;

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& kernel = context->input(1);
    if (!CheckMatrix(context, features, "features")) return;
    int64_t n_out;
    if (!GetRowCount(context, 5, "num_out_rows", &n_out)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, features.dim_size(0), n_out, &map)) return;
    if (!CheckDepthwiseKernel(context, kernel, map.num_offsets,
                              features.dim_size(1), "features")) {
      return;
    }
    const int64_t C = kernel.dim_size(1), M = kernel.dim_size(2);
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_out, C * M}, &output)) return;
    DepthwiseConv<T>(features.flat<T>().data(), C, M, kernel.flat<T>().data(),
                     /*transpose=*/false, map, n_out, output->flat<T>().data(),
                     IntraOpParallelFor(context));
  }
};

template <typename T>
class DepthwiseConvBackpropInputOp : public SparseOpKernel {
 public:
  using SparseOpKernel::SparseOpKernel;

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& kernel = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return;
    int64_t n_in;
    if (!GetRowCount(context, 5, "num_in_rows", &n_in)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, n_in, grad.dim_size(0), &map)) return;
    if (kernel.dims() != 3 ||
        kernel.dim_size(1) * kernel.dim_size(2) != grad.dim_size(1)) {
      context->CtxFailure(absl::InvalidArgumentError(
          "kernel [K, C, M] must give grad_output's " +
          std::to_string(grad.dim_size(1)) + " columns as C x M, got shape " +
          kernel.shape().DebugString()));
      return;
    }
    if (!CheckDepthwiseKernel(context, kernel, map.num_offsets,
                              kernel.dim_size(1), "grad_features")) {
      return;
    }
    const int64_t C = kernel.dim_size(1), M = kernel.dim_size(2);
    // The transposed map, sorted by input row: one pair per row and offset.
    TempAllocator temp(context);
    KernelMapView transposed;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, TransposedKernelMap(map, n_in, temp.callback(),
                                     IntraOpParallelFor(context), &transposed));
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_in, C}, &output)) return;
    DepthwiseConv<T>(grad.flat<T>().data(), C, M, kernel.flat<T>().data(),
                     /*transpose=*/true, transposed, n_in,
                     output->flat<T>().data(), IntraOpParallelFor(context));
  }
};

template <typename T>
class DepthwiseConvBackpropKernelOp : public SparseOpKernel {
 public:
  using SparseOpKernel::SparseOpKernel;

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& grad = context->input(1);
    if (!CheckMatrix(context, features, "features")) return;
    if (!CheckMatrix(context, grad, "grad_output")) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, features.dim_size(0), grad.dim_size(0), &map))
      return;
    const int64_t C = features.dim_size(1);
    int64_t M;
    if (!GetDepthwiseMultiplier(context, 5, C, grad.dim_size(1), &M)) return;
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {map.num_offsets, C, M}, &output)) return;
    TempAllocator temp(context);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, DepthwiseConvWeightGradient<T>(
                     features.flat<T>().data(), C, M, grad.flat<T>().data(),
                     map, output->flat<T>().data(), temp.callback(),
                     IntraOpParallelFor(context)));
  }
};

#define SPARSE_OPS_REGISTER(T)                                          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConv")               \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<T>("T"),                  \
                          DepthwiseConvOp<T>);                          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConvBackpropInput")  \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<T>("T"),                  \
                          DepthwiseConvBackpropInputOp<T>);             \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>DepthwiseConvBackpropKernel") \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<T>("T"),                  \
                          DepthwiseConvBackpropKernelOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops
