// GPU kernels of the coordinate lookup and union ops: check shapes, call
// the CUDA core (kernels/cuda/core_gpu.h), read its result struct back
// once. Lookup reads it after the work (its output size is known); union
// reads its site count, which sizes the union's coordinates.
#if GOOGLE_CUDA

#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda/core_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

class CoordinateLookupGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& coordinates = context->input(0);
    const Tensor& queries = context->input(1);
    if (!CheckCoordinatesShape(context, coordinates, "coordinates"))
      return done();
    const int dims = coordinates.dim_size(1);
    // Queries may be anything int32 of the right width: a negative batch or
    // a site outside the set's range is just not found.
    if (queries.dims() != 2 || queries.dim_size(1) != dims) {
      context->CtxFailure(absl::InvalidArgumentError(
          "queries must be [Q, " + std::to_string(dims) +
          "] (the columns of coordinates), got shape " +
          queries.shape().DebugString()));
      return done();
    }
    const int64_t n = coordinates.dim_size(0), q = queries.dim_size(0);
    Tensor* rows = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapInfo> info;
    const size_t bytes = gpu::CoordinateLookupWorkspaceBytes(n);
    if (!AllocateOutput(context, 0, {q}, &rows) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::CoordinateLookup(
                            coordinates.flat<int32_t>().data(), n, dims,
                            queries.flat<int32_t>().data(), q,
                            rows->flat<int32_t>().data(), info.on_device(),
                            BytesOf(workspace), bytes, StreamOf(context)))) {
      return done();
    }
    FinishWithResult(context, std::move(info), gpu::CoordinateLookupInfoStatus,
                     std::move(done));
  }
};

class CoordinateUnionGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    std::vector<const int32_t*> data;
    std::vector<int64_t> sizes;
    if (!CheckUnionInputs(context, CheckCoordinatesShape, &data, &sizes))
      return done();
    const int num_inputs = static_cast<int>(sizes.size());
    const int64_t total =
        std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
    const int dims = context->input(0).dim_size(1);
    tensorflow::OpOutputList row_outputs;
    OP_REQUIRES_OK_ASYNC(context, context->output_list("rows", &row_outputs),
                         done);
    std::vector<int32_t*> rows(num_inputs);
    for (int i = 0; i < num_inputs; ++i) {
      Tensor* r = nullptr;
      OP_REQUIRES_OK_ASYNC(context, row_outputs.allocate(i, {sizes[i]}, &r),
                           done);
      rows[i] = r->flat<int32_t>().data();
    }
    Tensor workspace;
    DeviceResult<gpu::KernelMapInfo> info;
    const size_t bytes = gpu::CoordinateUnionWorkspaceBytes(total, dims);
    if (!AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::CoordinateUnionCount(
                            data.data(), sizes.data(), num_inputs, dims,
                            rows.data(), info.on_device(), BytesOf(workspace),
                            bytes, StreamOf(context)))) {
      return done();
    }
    // The workspace holds the union's runs until the fill has run.
    FinishWithResult(
        context, info,
        [context, workspace, sizes, bytes, total,
         dims](const gpu::KernelMapInfo& host) mutable {
          Status status = gpu::CoordinateUnionInfoStatus(
              host, sizes.data(), static_cast<int>(sizes.size()));
          Tensor* out = nullptr;
          if (status.ok() &&
              AllocateOutput(context, 0, {host.num_pairs, dims}, &out)) {
            status = gpu::CoordinateUnionFill(
                total, dims, out->flat<int32_t>().data(), BytesOf(workspace),
                bytes, StreamOf(context));
          }
          return status;
        },
        std::move(done));
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseOps>CoordinateLookup").Device(DEVICE_GPU),
                        CoordinateLookupGpuOp);
REGISTER_KERNEL_BUILDER(Name("SparseOps>CoordinateUnion").Device(DEVICE_GPU),
                        CoordinateUnionGpuOp);

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
