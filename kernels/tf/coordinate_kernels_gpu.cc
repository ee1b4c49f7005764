// GPU kernel of SparseOps>KernelMap: check shapes and the (host) stride,
// count the pairs on the device, read the count and any data error back
// once (the pair count sizes the outputs), then fill the map.
#if GOOGLE_CUDA

#include <algorithm>

#include "kernels/cuda/core_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

class KernelMapGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context, DoneCallback done) override {
    const Tensor& in = context->input(0);
    const Tensor& out = context->input(1);
    const Tensor& offsets = context->input(2);
    const Tensor& stride = context->input(3);  // host memory
    if (!CheckCoordinatesShape(context, in, "in_coordinates") ||
        !CheckCoordinatesShape(context, out, "out_coordinates")) {
      return done();
    }
    const int dims = in.dim_size(1);
    if (out.dim_size(1) != dims) {
      context->CtxFailure(absl::InvalidArgumentError(
          "in_coordinates and out_coordinates must have the same number of "
          "columns, got " + std::to_string(dims) + " and " +
          std::to_string(out.dim_size(1))));
      return done();
    }
    if (!CheckOffsets(context, offsets, dims - 1) ||
        !CheckStride(context, stride, dims - 1)) {
      return done();
    }
    const int64_t n_in = in.dim_size(0), n_out = out.dim_size(0);
    const int64_t K = offsets.dim_size(0);
    gpu::DeviceGeometry geometry{offsets.flat<int32_t>().data(), K, {}};
    std::copy_n(stride.flat<int32_t>().data(), dims - 1, geometry.stride.v);
    // The same buffer for both: a submanifold map (half the offsets probed
    // for symmetric geometries), as on the CPU.
    const bool same = in.flat<int32_t>().data() == out.flat<int32_t>().data();

    Tensor workspace, info_device, info_host;
    const size_t bytes = gpu::KernelMapWorkspaceBytes(n_in, n_out, K);
    if (!AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateDeviceBytes(context, sizeof(gpu::KernelMapInfo), &info_device) ||
        !AllocateHostStruct<gpu::KernelMapInfo>(context, &info_host)) {
      return done();
    }
    auto* info = static_cast<gpu::KernelMapInfo*>(BytesOf(info_device));
    Status status = gpu::KernelMapCount(
        in.flat<int32_t>().data(), n_in, out.flat<int32_t>().data(), n_out, dims,
        geometry, same, info, BytesOf(workspace), bytes, StreamOf(context));
    if (status.ok()) {
      status = gpu::CopyToHost(BytesOf(info_host), info, sizeof(gpu::KernelMapInfo),
                               StreamOf(context));
    }
    if (!status.ok()) {
      context->CtxFailure(ToTfStatus(status));
      return done();
    }
    // The workspace holds the neighbour table until the fill has run.
    ThenOnHost(context, [context, workspace, info_host, bytes, n_in, n_out, K,
                         done]() mutable {
      const auto& host = *static_cast<const gpu::KernelMapInfo*>(BytesOf(info_host));
      const Status data = gpu::KernelMapInfoStatus(host);
      Tensor *splits = nullptr, *in_rows = nullptr, *out_rows = nullptr;
      if (!data.ok()) {
        context->CtxFailure(ToTfStatus(data));
      } else if (AllocateOutput(context, 0, {K + 1}, &splits) &&
                 AllocateOutput(context, 1, {host.num_pairs}, &in_rows) &&
                 AllocateOutput(context, 2, {host.num_pairs}, &out_rows)) {
        const Status filled = gpu::KernelMapFill(
            n_in, n_out, K, splits->flat<int64_t>().data(),
            in_rows->flat<int32_t>().data(), out_rows->flat<int32_t>().data(),
            BytesOf(workspace), bytes, StreamOf(context));
        if (!filled.ok()) context->CtxFailure(ToTfStatus(filled));
      }
      done();
    });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("SparseOps>KernelMap").Device(DEVICE_GPU).HostMemory("stride"),
    KernelMapGpuOp);

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
