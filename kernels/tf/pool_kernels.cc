// CPU kernels of the max pooling ops: validate, allocate, call the core.
#include "kernels/core/coordinates.h"
#include "kernels/core/pool.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class MaxPoolOp : public OpKernel {
 public:
  explicit MaxPoolOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckMatrix(context, features, "features")) return;
    int64_t n_out;
    if (!GetRowCount(context, 4, "num_out_rows", &n_out)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 1, features.dim_size(0), n_out, &map)) {
      return;
    }
    const int64_t c = features.dim_size(1);
    Tensor* output = nullptr;
    Tensor* argmax = nullptr;
    if (!AllocateOutput(context, 0, {n_out, c}, &output)) return;
    if (!AllocateOutput(context, 1, {n_out, c}, &argmax)) return;
    SparseMaxPool<T>(features.flat<T>().data(), c, map, n_out,
                     output->flat<T>().data(), argmax->flat<int32_t>().data(),
                     IntraOpParallelFor(context));
  }
};

template <typename T>
class MaxPoolGradOp : public OpKernel {
 public:
  explicit MaxPoolGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& argmax = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return;
    if (argmax.shape() != grad.shape()) {
      context->CtxFailure(absl::InvalidArgumentError(
          "argmax must have the shape of grad_output " +
          grad.shape().DebugString() + ", got " +
          argmax.shape().DebugString()));
      return;
    }
    int64_t n_in;
    if (!GetRowCount(context, 2, "num_in_rows", &n_in)) return;
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, ValidateArgmax(argmax.flat<int32_t>().data(),
                                argmax.NumElements(), n_in, parallel_for));
    const int64_t c = grad.dim_size(1);
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_in, c}, &output)) return;
    SparseMaxPoolGrad<T>(grad.flat<T>().data(), argmax.flat<int32_t>().data(),
                         c, grad.dim_size(0), n_in, output->flat<T>().data(),
                         parallel_for);
  }
};

#define SPARSE_OPS_REGISTER(T)                                             \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("SparseOps>MaxPool").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      MaxPoolOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>MaxPoolGrad")                    \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          MaxPoolGradOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops
