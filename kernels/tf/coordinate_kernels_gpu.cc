// GPU kernels of the coordinate ops: StridedCoordinates and
// GenerativeCoordinates (sites counted on the device, the count read back
// once, then written), and KernelMap.
//
// KernelMap: check shapes and the (host) stride,
// count the pairs on the device, read the count and any data error back
// once (the pair count sizes the outputs), then fill the map. The errors
// are the CPU kernel's, in its order (negative batch indices, then the
// input's key width and duplicates, then the output's).
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

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
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
          "columns, got " +
          std::to_string(dims) + " and " + std::to_string(out.dim_size(1))));
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

    // A separate map is checked like the CPU checks it: out_coordinates get
    // their own key layout and duplicate test (a second count with no
    // offsets), read back with the first.
    Tensor workspace, out_workspace;
    DeviceResult<gpu::KernelMapInfo> info, out_info;
    const size_t bytes = gpu::KernelMapWorkspaceBytes(n_in, n_out, K);
    const size_t out_bytes =
        same ? 0 : gpu::KernelMapWorkspaceBytes(n_out, n_out, 0);
    if (!AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info) ||
        (!same && (!AllocateDeviceBytes(context, out_bytes, &out_workspace) ||
                   !AllocateResult(context, &out_info)))) {
      return done();
    }
    const int32_t* out_coords = out.flat<int32_t>().data();
    Status status = gpu::KernelMapCount(
        in.flat<int32_t>().data(), n_in, out_coords, n_out, dims, geometry,
        same, info.on_device(), BytesOf(workspace), bytes, StreamOf(context));
    if (status.ok() && !same) {
      const gpu::DeviceGeometry none{geometry.offsets, 0, geometry.stride};
      status = gpu::KernelMapCount(
          out_coords, n_out, out_coords, n_out, dims, none,
          /*same_coordinates=*/true, out_info.on_device(),
          BytesOf(out_workspace), out_bytes, StreamOf(context));
    }
    if (status.ok()) {
      status = gpu::CopyToHost(BytesOf(info.host), info.on_device(),
                               sizeof(gpu::KernelMapInfo), StreamOf(context));
    }
    if (status.ok() && !same) {
      status = gpu::CopyToHost(BytesOf(out_info.host), out_info.on_device(),
                               sizeof(gpu::KernelMapInfo), StreamOf(context));
    }
    if (Failed(context, status)) return done();
    // The workspace holds the neighbour table until the fill has run.
    ThenOnHost(
        context,
        [context, workspace, info, out_info, same, bytes, n_in, n_out,
         K]() mutable {
          Status data = gpu::KernelMapInfoStatus(info.on_host());
          if (data.ok() && !same) {
            const Status out_data =
                gpu::KernelMapInfoStatus(out_info.on_host());
            if (!out_data.ok()) {
              data = Status::Error("out_coordinates: " + out_data.message());
            }
          }
          if (Failed(context, data)) return;
          const int64_t pairs = info.on_host().num_pairs;
          Tensor *splits = nullptr, *in_rows = nullptr, *out_rows = nullptr;
          if (!AllocateOutput(context, 0, {K + 1}, &splits) ||
              !AllocateOutput(context, 1, {pairs}, &in_rows) ||
              !AllocateOutput(context, 2, {pairs}, &out_rows)) {
            return;
          }
          const Status filled = gpu::KernelMapFill(
              n_in, n_out, K, splits->flat<int64_t>().data(),
              in_rows->flat<int32_t>().data(), out_rows->flat<int32_t>().data(),
              BytesOf(workspace), bytes, StreamOf(context));
          Failed(context, filled);
        },
        std::move(done));
  }
};

class StridedCoordinatesGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& in = context->input(0);
    const Tensor& stride = context->input(1);  // host memory
    if (!CheckCoordinatesShape(context, in, "coordinates")) return done();
    const int dims = in.dim_size(1);
    if (!CheckStride(context, stride, dims - 1)) return done();
    const int64_t n = in.dim_size(0);
    gpu::Stride by_value{};
    std::copy_n(stride.flat<int32_t>().data(), dims - 1, by_value.v);
    Tensor workspace;
    DeviceResult<gpu::KernelMapInfo> info;
    const size_t bytes = gpu::StridedCoordinatesWorkspaceBytes(n);
    if (!AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::StridedCoordinatesCount(
                            in.flat<int32_t>().data(), n, dims, by_value,
                            info.on_device(), BytesOf(workspace), bytes,
                            StreamOf(context)))) {
      return done();
    }
    // The workspace holds the unique keys until the fill has run.
    FinishWithResult(
        context, info,
        [context, workspace, info, bytes, n,
         dims](const gpu::KernelMapInfo& host) mutable {
          Status status = gpu::StridedCoordinatesInfoStatus(host);
          Tensor* out = nullptr;
          if (status.ok() &&
              AllocateOutput(context, 0, {host.num_pairs, dims}, &out)) {
            status = gpu::StridedCoordinatesFill(
                info.on_device(), n, dims, host.num_pairs,
                out->flat<int32_t>().data(), BytesOf(workspace), bytes,
                StreamOf(context));
          }
          return status;
        },
        std::move(done));
  }
};

class GenerativeCoordinatesGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& in = context->input(0);
    const Tensor& offsets = context->input(1);
    const Tensor& stride = context->input(2);  // host memory
    if (!CheckCoordinatesShape(context, in, "coordinates")) return done();
    const int dims = in.dim_size(1);
    if (!CheckOffsets(context, offsets, dims - 1) ||
        !CheckStride(context, stride, dims - 1)) {
      return done();
    }
    const int64_t n = in.dim_size(0), K = offsets.dim_size(0);
    gpu::DeviceGeometry geometry{offsets.flat<int32_t>().data(), K, {}};
    std::copy_n(stride.flat<int32_t>().data(), dims - 1, geometry.stride.v);
    Tensor workspace;
    DeviceResult<gpu::KernelMapInfo> info;
    const size_t bytes = gpu::GenerativeCoordinatesWorkspaceBytes(n, K);
    if (!AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::GenerativeCoordinatesCount(
                            in.flat<int32_t>().data(), n, dims, geometry,
                            info.on_device(), BytesOf(workspace), bytes,
                            StreamOf(context)))) {
      return done();
    }
    // The workspace holds the unique keys until the fill has run.
    FinishWithResult(
        context, info,
        [context, workspace, info, bytes, n, K,
         dims](const gpu::KernelMapInfo& host) mutable {
          Status status = gpu::GenerativeCoordinatesInfoStatus(host);
          Tensor* out = nullptr;
          if (status.ok() &&
              AllocateOutput(context, 0, {host.num_pairs, dims}, &out)) {
            status = gpu::GenerativeCoordinatesFill(
                info.on_device(), n, K, dims, host.num_pairs,
                out->flat<int32_t>().data(), BytesOf(workspace), bytes,
                StreamOf(context));
          }
          return status;
        },
        std::move(done));
  }
};

REGISTER_KERNEL_BUILDER(
    Name("SparseOps>KernelMap").Device(DEVICE_GPU).HostMemory("stride"),
    KernelMapGpuOp);
REGISTER_KERNEL_BUILDER(Name("SparseOps>StridedCoordinates")
                            .Device(DEVICE_GPU)
                            .HostMemory("stride"),
                        StridedCoordinatesGpuOp);
REGISTER_KERNEL_BUILDER(Name("SparseOps>GenerativeCoordinates")
                            .Device(DEVICE_GPU)
                            .HostMemory("stride"),
                        GenerativeCoordinatesGpuOp);

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
