// CPU kernels of the pooling ops: validate, allocate, call the core.
#include "kernels/core/coordinates.h"
#include "kernels/core/kernel_map.h"
#include "kernels/core/pool.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class MaxPoolOp : public SparseOpKernel {
 public:
  explicit MaxPoolOp(OpKernelConstruction* context) : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
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
class MaxPoolGradOp : public SparseOpKernel {
 public:
  explicit MaxPoolGradOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
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

template <typename T>
class SumPoolOp : public SparseOpKernel {
 public:
  explicit SumPoolOp(OpKernelConstruction* context) : SparseOpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckMatrix(context, features, "features")) return;
    int64_t n_out;
    if (!GetRowCount(context, 4, "num_out_rows", &n_out)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 1, features.dim_size(0), n_out, &map)) return;
    const int64_t c = features.dim_size(1);
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_out, c}, &output)) return;
    SparseSumPool<T>(features.flat<T>().data(), c, map, n_out, average_,
                     output->flat<T>().data(), IntraOpParallelFor(context));
  }

 private:
  bool average_;
};

template <typename T>
class SumPoolTransposeOp : public SparseOpKernel {
 public:
  explicit SumPoolTransposeOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckMatrix(context, features, "features")) return;
    int64_t n_in;
    if (!GetRowCount(context, 4, "num_in_rows", &n_in)) return;
    const int64_t n_out = features.dim_size(0), c = features.dim_size(1);
    KernelMapView map;
    if (!GetKernelMap(context, 1, n_in, n_out, &map)) return;
    // The pairs by input row: the rows each input row receives from.
    TempAllocator temp(context);
    KernelMapView transposed;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, TransposedKernelMap(map, n_in, temp.callback(),
                                     IntraOpParallelFor(context), &transposed));
    Tensor inverse_counts;
    if (!AllocateTemp(context, tensorflow::DataTypeToEnum<T>::value,
                      {average_ ? n_out : 0}, &inverse_counts)) {
      return;
    }
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_in, c}, &output)) return;
    SparseSumPoolTranspose<T>(
        features.flat<T>().data(), c, map, transposed, n_in, n_out, average_,
        inverse_counts.flat<T>().data(), output->flat<T>().data(),
        IntraOpParallelFor(context));
  }

 private:
  bool average_;
};

// The global pools' num_batches (input 2) and their rows (batch_index,
// input 1) grouped by item, in temporaries of `temp`.
bool GroupGlobalPoolInputs(OpKernelContext* context, int64_t n,
                           int64_t channels, TempAllocator* temp,
                           int64_t* num_batches, GlobalPoolGroups* groups) {
  if (!GetRowCount(context, 2, "num_batches", num_batches) ||
      !CheckBatchIndexShape(context, context->input(1), n)) {
    return false;
  }
  const Status status =
      GroupGlobalPoolRows(context->input(1).flat<int32_t>().data(), n,
                          *num_batches, channels, temp->callback(), groups);
  if (!status.ok()) context->CtxFailure(ToTfStatus(status));
  return status.ok();
}

template <typename T>
class GlobalMaxPoolOp : public SparseOpKernel {
 public:
  explicit GlobalMaxPoolOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckMatrix(context, features, "features")) return;
    const int64_t n = features.dim_size(0), c = features.dim_size(1);
    int64_t B;
    TempAllocator temp(context);
    GlobalPoolGroups groups;
    if (!GroupGlobalPoolInputs(context, n, c, &temp, &B, &groups)) return;
    Tensor* output = nullptr;
    Tensor* argmax = nullptr;
    if (!AllocateOutput(context, 0, {B, c}, &output)) return;
    if (!AllocateOutput(context, 1, {B, c}, &argmax)) return;
    if (c == 0) return;
    Tensor partial, partial_argmax;
    if (!AllocateTemp(context, tensorflow::DataTypeToEnum<T>::value,
                      {groups.num_chunks, c}, &partial) ||
        !AllocateTemp(context, tensorflow::DT_INT32, {groups.num_chunks, c},
                      &partial_argmax)) {
      return;
    }
    GlobalMaxPool<T>(features.flat<T>().data(), c, groups.starts, groups.order,
                     groups.chunk_first, B, partial.flat<T>().data(),
                     partial_argmax.flat<int32_t>().data(),
                     output->flat<T>().data(), argmax->flat<int32_t>().data(),
                     IntraOpParallelFor(context));
  }
};

template <typename T>
class GlobalSumPoolOp : public SparseOpKernel {
 public:
  explicit GlobalSumPoolOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    if (!CheckMatrix(context, features, "features")) return;
    const int64_t n = features.dim_size(0), c = features.dim_size(1);
    int64_t B;
    TempAllocator temp(context);
    GlobalPoolGroups groups;
    if (!GroupGlobalPoolInputs(context, n, c, &temp, &B, &groups)) return;
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {B, c}, &output)) return;
    if (c == 0) return;
    Tensor partial;
    if (!AllocateTemp(context, tensorflow::DataTypeToEnum<T>::value,
                      {groups.num_chunks, c}, &partial)) {
      return;
    }
    GlobalSumPool<T>(features.flat<T>().data(), c, groups.starts, groups.order,
                     groups.chunk_first, B, average_, partial.flat<T>().data(),
                     output->flat<T>().data(), IntraOpParallelFor(context));
  }

 private:
  bool average_;
};

template <typename T>
class GlobalSumPoolGradOp : public SparseOpKernel {
 public:
  explicit GlobalSumPoolGradOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& batch = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return;
    if (batch.dims() != 1 || batch.dim_size(0) >= kMaxRows) {
      context->CtxFailure(absl::InvalidArgumentError(
          "batch_index must be a vector of fewer than 2^31 - 1 entries, got "
          "shape " +
          batch.shape().DebugString()));
      return;
    }
    const int64_t n = batch.dim_size(0), c = grad.dim_size(1);
    // One row of grad_output per batch item.
    TempAllocator temp(context);
    GlobalPoolGroups groups;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context,
        GroupGlobalPoolRows(batch.flat<int32_t>().data(), n, grad.dim_size(0),
                            c, temp.callback(), &groups));
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n, c}, &output)) return;
    if (c == 0) return;
    GlobalSumPoolGrad<T>(grad.flat<T>().data(), c, batch.flat<int32_t>().data(),
                         n, groups.starts, average_, output->flat<T>().data(),
                         IntraOpParallelFor(context));
  }

 private:
  bool average_;
};

#define SPARSE_OPS_REGISTER(T)                                                 \
  REGISTER_KERNEL_BUILDER(                                                     \
      Name("SparseOps>MaxPool").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
      MaxPoolOp<T>);                                                           \
  REGISTER_KERNEL_BUILDER(                                                     \
      Name("SparseOps>MaxPoolGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      MaxPoolGradOp<T>);
#define SPARSE_OPS_REGISTER_MORE(T)                                        \
  REGISTER_KERNEL_BUILDER(                                                 \
      Name("SparseOps>SumPool").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      SumPoolOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>SumPoolTranspose")               \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          SumPoolTransposeOp<T>);                          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalMaxPool")                  \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          GlobalMaxPoolOp<T>);                             \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalSumPool")                  \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          GlobalSumPoolOp<T>);                             \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalSumPoolGrad")              \
                              .Device(DEVICE_CPU)                          \
                              .TypeConstraint<T>("T"),                     \
                          GlobalSumPoolGradOp<T>);
SPARSE_OPS_REGISTER_MORE(float)
SPARSE_OPS_REGISTER_MORE(double)
#undef SPARSE_OPS_REGISTER_MORE
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops
