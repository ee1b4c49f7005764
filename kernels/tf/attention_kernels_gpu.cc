// GPU kernel of SparseOps>Attention: check shapes, rank every entry on the
// device (kernels/cuda/attention_gpu.h), read the kept-row count (and the
// coordinates' negative batch check) back once, then copy the kept rows.
#if GOOGLE_CUDA

#include <string>

#include "kernels/core/attention.h"
#include "kernels/cuda/attention_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
class AttentionGpuOp : public SparseAsyncOpKernel {
 public:
  explicit AttentionGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context) {
    std::string mode, per;
    OP_REQUIRES_OK(context, context->GetAttr("mode", &mode));
    OP_REQUIRES_OK(context, context->GetAttr("per", &per));
    mode_ = mode == "abs" ? AttentionMode::kAbs : AttentionMode::kValue;
    per_ = per == "site" ? AttentionPer::kSite : AttentionPer::kChannel;
  }

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    if (!CheckAttentionInputs(context, CheckCoordinatesShape)) return done();
    const Tensor& features = context->input(0);
    const Tensor& coordinates = context->input(1);
    const int64_t n = features.dim_size(0), c = features.dim_size(1);
    const int64_t k = context->input(2).scalar<int64_t>()();  // host memory
    const AttentionPer per = per_;
    Tensor* keep = nullptr;
    Tensor workspace;
    DeviceResult<gpu::AttentionInfo> info;
    const size_t bytes = gpu::AttentionWorkspaceBytes<T>(n, c, per);
    if (!AllocateOutput(context, 0, {n, c}, &keep) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &info)) {
      return done();
    }
    if (Failed(context,
               gpu::AttentionKeep<T>(
                   features.flat<T>().data(), n, c,
                   coordinates.flat<int32_t>().data(), coordinates.dim_size(1),
                   k, mode_, per, keep->flat<bool>().data(), info.on_device(),
                   BytesOf(workspace), bytes, StreamOf(context)))) {
      return done();
    }
    // The workspace holds the kept rows until they are copied.
    FinishWithResult(
        context, info,
        [context, workspace, bytes, n, c,
         per](const gpu::AttentionInfo& host) mutable {
          Status status = gpu::AttentionInfoStatus(host);
          Tensor* rows = nullptr;
          if (status.ok() &&
              AllocateOutput(context, 1, {host.num_rows}, &rows)) {
            status = gpu::AttentionKeptRows<T>(
                n, c, per, host.num_rows, rows->flat<int32_t>().data(),
                BytesOf(workspace), bytes, StreamOf(context));
          }
          return status;
        },
        std::move(done));
  }

 private:
  AttentionMode mode_;
  AttentionPer per_;
};

#define SPARSE_OPS_REGISTER(T)                        \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>Attention") \
                              .Device(DEVICE_GPU)     \
                              .TypeConstraint<T>("T") \
                              .HostMemory("k"),       \
                          AttentionGpuOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
