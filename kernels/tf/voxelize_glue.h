// What the CPU and GPU kernels of SparseOps>Voxelize share: the mode attr
// and the checks of the inputs' shapes and of voxel_size (on the host).
#ifndef SPARSE_OPS_KERNELS_TF_VOXELIZE_GLUE_H_
#define SPARSE_OPS_KERNELS_TF_VOXELIZE_GLUE_H_

#include <limits>
#include <string>

#include "kernels/core/voxelize.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

inline VoxelMode GetVoxelMode(tensorflow::OpKernelConstruction* context) {
  std::string mode = "average";
  if (!context->GetAttr("mode", &mode).ok()) return VoxelMode::kAverage;
  if (mode == "sum") return VoxelMode::kSum;
  if (mode == "max") return VoxelMode::kMax;
  if (mode == "first") return VoxelMode::kFirst;
  return VoxelMode::kAverage;
}

// The inputs of Voxelize: points [N, 1 + D] (N < kMaxRows, 1 <= D <
// kMaxDims), features [N, C], voxel_size [D] (on the host), finite and > 0.
inline bool CheckVoxelizeInputs(tensorflow::OpKernelContext* context) {
  const tensorflow::Tensor& points = context->input(0);
  const tensorflow::Tensor& features = context->input(1);
  const tensorflow::Tensor& voxel_size = context->input(2);
  if (points.dims() != 2 || points.dim_size(1) < 2 ||
      points.dim_size(1) > kMaxDims) {
    context->CtxFailure(
        absl::InvalidArgumentError("points must be [N, 1 + D] with 1 <= D <= " +
                                   std::to_string(kMaxDims - 1) +
                                   " (column 0 the batch index), got shape " +
                                   points.shape().DebugString()));
    return false;
  }
  if (points.dim_size(0) >= kMaxRows) {
    context->CtxFailure(absl::InvalidArgumentError(
        "points has too many rows for int32 row indices: " +
        std::to_string(points.dim_size(0))));
    return false;
  }
  if (!CheckMatrix(context, features, "features")) return false;
  if (features.dim_size(0) != points.dim_size(0)) {
    context->CtxFailure(absl::InvalidArgumentError(
        "features and points must have the same number of rows, got " +
        std::to_string(features.dim_size(0)) + " and " +
        std::to_string(points.dim_size(0))));
    return false;
  }
  const int64_t d = points.dim_size(1) - 1;
  if (voxel_size.dims() != 1 || voxel_size.dim_size(0) != d) {
    context->CtxFailure(
        absl::InvalidArgumentError("voxel_size must have " + std::to_string(d) +
                                   " entries (one per position column), "
                                   "got shape " +
                                   voxel_size.shape().DebugString()));
    return false;
  }
  for (int64_t a = 0; a < d; ++a) {
    const double size = voxel_size.flat<double>()(a);
    if (!(size > 0 && size <= std::numeric_limits<double>::max())) {
      context->CtxFailure(absl::InvalidArgumentError(
          "voxel_size must be finite and > 0, got " + std::to_string(size) +
          " for axis " + std::to_string(a + 1)));
      return false;
    }
  }
  return true;
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_TF_VOXELIZE_GLUE_H_
