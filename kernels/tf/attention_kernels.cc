// CPU kernel of the k-selection attention op: validate, allocate, call the
// core.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/core/attention.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class AttentionOp : public SparseOpKernel {
 public:
  explicit AttentionOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {
    std::string mode, per;
    OP_REQUIRES_OK(context, context->GetAttr("mode", &mode));
    OP_REQUIRES_OK(context, context->GetAttr("per", &per));
    mode_ = mode == "abs" ? AttentionMode::kAbs : AttentionMode::kValue;
    per_ = per == "site" ? AttentionPer::kSite : AttentionPer::kChannel;
  }

  void ComputeChecked(OpKernelContext* context) override {
    if (!CheckAttentionInputs(context, CheckCoordinates)) return;
    const Tensor& features = context->input(0);
    const Tensor& coordinates = context->input(1);
    const int64_t n = features.dim_size(0);
    const int64_t k = context->input(2).scalar<int64_t>()();
    const int64_t c = features.dim_size(1);
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    const BatchGroups groups = GroupRowsByBatch(
        coordinates.flat<int32_t>().data(), n, coordinates.dim_size(1));
    Tensor* keep = nullptr;
    if (!AllocateOutput(context, 0, {n, c}, &keep)) return;
    AttentionKeep<T>(features.flat<T>().data(), n, c, groups, k, mode_, per_,
                     keep->flat<bool>().data(), parallel_for);
    const std::vector<int32_t> rows =
        KeptRows(keep->flat<bool>().data(), n, c, parallel_for);
    Tensor* rows_out = nullptr;
    const int64_t s = static_cast<int64_t>(rows.size());
    if (!AllocateOutput(context, 1, {s}, &rows_out)) return;
    std::copy(rows.begin(), rows.end(), rows_out->flat<int32_t>().data());
  }

 private:
  AttentionMode mode_;
  AttentionPer per_;
};

#define SPARSE_OPS_REGISTER(T)                                               \
  REGISTER_KERNEL_BUILDER(                                                   \
      Name("SparseOps>Attention").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      AttentionOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops
