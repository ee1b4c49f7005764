// CPU kernel of SparseOps>Voxelize: validate, then the core's steps
// (kernels/core/voxelize.h), the site count sizing the outputs.
#include "kernels/core/voxelize.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/voxelize_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename P, typename T>
class VoxelizeOp : public SparseOpKernel {
 public:
  explicit VoxelizeOp(OpKernelConstruction* context)
      : SparseOpKernel(context), mode_(GetVoxelMode(context)) {}

  void ComputeChecked(OpKernelContext* context) override {
    if (!CheckVoxelizeInputs(context)) return;
    const Tensor& points = context->input(0);
    const Tensor& features = context->input(1);
    const int64_t n = points.dim_size(0), C = features.dim_size(1);
    const int dims = static_cast<int>(points.dim_size(1));
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    Tensor grid;
    if (!AllocateTemp(context, tensorflow::DT_INT32, {n, dims}, &grid)) return;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, VoxelGrid<P>(points.flat<P>().data(), n, dims,
                              context->input(2).flat<double>().data(),
                              grid.flat<int32_t>().data(), parallel_for));
    Tensor* inverse = nullptr;
    if (!AllocateOutput(context, 2, {n}, &inverse)) return;
    TempAllocator temp(context);
    VoxelSites sites;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context,
        FindVoxelSites(grid.flat<int32_t>().data(), n, dims, temp.callback(),
                       inverse->flat<int32_t>().data(), &sites, parallel_for));
    const int64_t m = sites.num_sites;
    const bool with_source =
        mode_ == VoxelMode::kMax || mode_ == VoxelMode::kFirst;
    Tensor *coordinates = nullptr, *merged = nullptr, *counts = nullptr,
           *source = nullptr;
    if (!AllocateOutput(context, 0, {m, dims}, &coordinates) ||
        !AllocateOutput(context, 1, {m, C}, &merged) ||
        !AllocateOutput(context, 3, {m}, &counts) ||
        !AllocateOutput(context, 4, {with_source ? m : 0, C}, &source)) {
      return;
    }
    VoxelCoordinates(grid.flat<int32_t>().data(), dims, sites,
                     coordinates->flat<int32_t>().data(),
                     counts->flat<int32_t>().data(), parallel_for);
    MergeVoxelFeatures<T>(
        features.flat<T>().data(), C, sites, mode_, merged->flat<T>().data(),
        with_source ? source->flat<int32_t>().data() : nullptr, parallel_for);
  }

 private:
  VoxelMode mode_;
};

#define SPARSE_OPS_REGISTER(P, T)                      \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>Voxelize")   \
                              .Device(DEVICE_CPU)      \
                              .TypeConstraint<P>("P")  \
                              .TypeConstraint<T>("T"), \
                          VoxelizeOp<P, T>);
SPARSE_OPS_REGISTER(float, float)
SPARSE_OPS_REGISTER(float, double)
SPARSE_OPS_REGISTER(double, float)
SPARSE_OPS_REGISTER(double, double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops
