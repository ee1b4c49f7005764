// GPU kernel of SparseOps>Voxelize: check shapes and voxel_size on the host,
// sort the points' keys on the device (kernels/cuda/voxelize_gpu.h), read
// the site count and errors back once, then write the sites and the merged
// features.
#if GOOGLE_CUDA

#include <vector>

#include "kernels/cuda/voxelize_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "kernels/tf/voxelize_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename P, typename T>
class VoxelizeGpuOp : public SparseAsyncOpKernel {
 public:
  explicit VoxelizeGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), mode_(GetVoxelMode(context)) {}

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    if (!CheckVoxelizeInputs(context)) return done();
    const Tensor& points = context->input(0);
    const Tensor& features = context->input(1);
    const Tensor& voxel_size = context->input(2);  // host memory
    const int64_t n = points.dim_size(0), channels = features.dim_size(1);
    const int dims = static_cast<int>(points.dim_size(1));
    std::vector<double> sizes(voxel_size.flat<double>().data(),
                              voxel_size.flat<double>().data() + dims - 1);
    Tensor* inverse = nullptr;
    Tensor workspace;
    DeviceResult<gpu::VoxelInfo> info;
    const size_t bytes = gpu::VoxelizeWorkspaceBytes<P>(n, dims);
    if (!AllocateOutput(context, 2, {n}, &inverse) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::VoxelizeCount<P>(
                            points.flat<P>().data(), n, dims, sizes.data(),
                            inverse->flat<int32_t>().data(), info.on_device(),
                            BytesOf(workspace), bytes, StreamOf(context)))) {
      return done();
    }
    // The workspace holds the sorted points until the fill has run.
    const VoxelMode mode = mode_;
    FinishWithResult(
        context, info,
        [context, workspace, sizes, bytes, n, dims, channels,
         mode](const gpu::VoxelInfo& host) mutable {
          Status status = gpu::VoxelInfoStatus(host, sizes.data());
          if (!status.ok()) return status;
          const int64_t m = host.num_sites;
          const bool with_source =
              mode == VoxelMode::kMax || mode == VoxelMode::kFirst;
          Tensor *coordinates = nullptr, *merged = nullptr, *counts = nullptr,
                 *source = nullptr;
          if (!AllocateOutput(context, 0, {m, dims}, &coordinates) ||
              !AllocateOutput(context, 1, {m, channels}, &merged) ||
              !AllocateOutput(context, 3, {m}, &counts) ||
              !AllocateOutput(context, 4, {with_source ? m : 0, channels},
                              &source)) {
            return Status::Ok();  // the allocation failed the op
          }
          return gpu::VoxelizeFill<T>(
              context->input(1).flat<T>().data(), n, dims, channels, m, mode,
              coordinates->flat<int32_t>().data(),
              counts->flat<int32_t>().data(), merged->flat<T>().data(),
              with_source ? source->flat<int32_t>().data() : nullptr,
              BytesOf(workspace), bytes, StreamOf(context));
        },
        std::move(done));
  }

 private:
  VoxelMode mode_;
};

#define SPARSE_OPS_REGISTER(P, T)                        \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>Voxelize")     \
                              .Device(DEVICE_GPU)        \
                              .TypeConstraint<P>("P")    \
                              .TypeConstraint<T>("T")    \
                              .HostMemory("voxel_size"), \
                          VoxelizeGpuOp<P, T>);
SPARSE_OPS_REGISTER(float, float)
SPARSE_OPS_REGISTER(float, double)
SPARSE_OPS_REGISTER(double, float)
SPARSE_OPS_REGISTER(double, double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
