// GPU kernel of SparseOps>CoordinateLookup: check shapes, look the queries
// up in a hash table of the coordinates on the device (kernels/cuda), and
// read the coordinates' data errors back once, after the work.
// CoordinateUnion has no GPU kernel yet (TensorFlow runs the CPU one).
#if GOOGLE_CUDA

#include <string>

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

  void ComputeAsyncChecked(OpKernelContext* context, DoneCallback done) override {
    const Tensor& coordinates = context->input(0);
    const Tensor& queries = context->input(1);
    if (!CheckCoordinatesShape(context, coordinates, "coordinates")) return done();
    const int dims = coordinates.dim_size(1);
    // Queries may be anything int32 of the right width: a negative batch or
    // a site outside the set's range is just not found.
    if (queries.dims() != 2 || queries.dim_size(1) != dims) {
      context->CtxFailure(absl::InvalidArgumentError(
          "queries must be [Q, " + std::to_string(dims) +
          "] (the columns of coordinates), got shape " + queries.shape().DebugString()));
      return done();
    }
    const int64_t n = coordinates.dim_size(0), q = queries.dim_size(0);
    Tensor* rows = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapInfo> info;
    const size_t bytes = gpu::CoordinateLookupWorkspaceBytes(n);
    if (!AllocateOutput(context, 0, {q}, &rows) ||
        !AllocateDeviceBytes(context, bytes, &workspace) || !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context, gpu::CoordinateLookup(coordinates.flat<int32_t>().data(), n, dims,
                                              queries.flat<int32_t>().data(), q,
                                              rows->flat<int32_t>().data(), info.on_device(),
                                              BytesOf(workspace), bytes,
                                              StreamOf(context)))) {
      return done();
    }
    FinishWithResult(context, std::move(info), gpu::CoordinateLookupInfoStatus,
                     std::move(done));
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseOps>CoordinateLookup").Device(DEVICE_GPU),
                        CoordinateLookupGpuOp);

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
