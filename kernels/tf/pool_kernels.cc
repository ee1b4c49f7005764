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

namespace {

constexpr int64_t kMaxPoolChannels = int64_t{1} << 24;

bool CheckPoolMatrix(OpKernelContext* context, const Tensor& t,
                     const char* name) {
  if (t.dims() != 2 || t.dim_size(1) > kMaxPoolChannels ||
      t.dim_size(0) >= (int64_t{1} << 31) - 1) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " must be a matrix [rows < 2^31 - 1, channels <= "
        "2^24], got shape " + t.shape().DebugString()));
    return false;
  }
  return true;
}

bool GetPoolRowCount(OpKernelContext* context, int index, const char* name,
                     int64_t* rows) {
  const Tensor& t = context->input(index);
  if (t.dims() != 0 || t.scalar<int64_t>()() < 0 ||
      t.scalar<int64_t>()() >= (int64_t{1} << 31) - 1) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " must be a scalar in [0, 2^31 - 1), got " +
        (t.dims() == 0 ? std::to_string(t.scalar<int64_t>()())
                       : "shape " + t.shape().DebugString())));
    return false;
  }
  *rows = t.scalar<int64_t>()();
  return true;
}

// The kernel map inputs at `first` .. `first` + 2, fully checked (they may
// come from a user).
bool GetPoolKernelMap(OpKernelContext* context, int first, int64_t n_in,
                      int64_t n_out, KernelMapView* map) {
  const Tensor& splits = context->input(first);
  const Tensor& in_rows = context->input(first + 1);
  const Tensor& out_rows = context->input(first + 2);
  if (splits.dims() != 1 || splits.dim_size(0) < 1 || in_rows.dims() != 1 ||
      out_rows.dims() != 1 || in_rows.dim_size(0) != out_rows.dim_size(0)) {
    context->CtxFailure(absl::InvalidArgumentError(
        "kernel map must be offset_splits [K + 1], in_rows [P] and out_rows "
        "[P], got shapes " + splits.shape().DebugString() + ", " +
        in_rows.shape().DebugString() + ", " + out_rows.shape().DebugString()));
    return false;
  }
  *map = KernelMapView{splits.flat<int64_t>().data(),
                       in_rows.flat<int32_t>().data(),
                       out_rows.flat<int32_t>().data(),
                       splits.dim_size(0) - 1};
  const Status status = ValidateKernelMap(*map, in_rows.dim_size(0), n_in,
                                          n_out, IntraOpParallelFor(context));
  if (!status.ok()) {
    context->CtxFailure(absl::InvalidArgumentError(status.message()));
    return false;
  }
  return true;
}

}  // namespace

template <typename T>
class MaxPoolOp : public OpKernel {
 public:
  explicit MaxPoolOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckPoolMatrix(context, features, "features")) return;
    int64_t n_out;
    if (!GetPoolRowCount(context, 4, "num_out_rows", &n_out)) return;
    KernelMapView map;
    if (!GetPoolKernelMap(context, 1, features.dim_size(0), n_out, &map)) {
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
    if (!CheckPoolMatrix(context, grad, "grad_output")) return;
    if (argmax.shape() != grad.shape()) {
      context->CtxFailure(absl::InvalidArgumentError(
          "argmax must have the shape of grad_output " +
          grad.shape().DebugString() + ", got " +
          argmax.shape().DebugString()));
      return;
    }
    int64_t n_in;
    if (!GetPoolRowCount(context, 2, "num_in_rows", &n_in)) return;
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
