// GPU kernels of the pooling ops: validate shapes, allocate, call the CUDA
// core (kernels/cuda/pool_gpu.h) on TensorFlow's stream. Values a user may
// give (kernel maps, argmax, batch_index) are checked on the device beside
// the work; the check is read back once, after the stream has run it, and
// fails the op with the CPU kernel's message.
#if GOOGLE_CUDA

#include "kernels/cuda/core_gpu.h"
#include "kernels/cuda/pool_gpu.h"
#include "kernels/tf/glue.h"
#include "kernels/tf/gpu_glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_GPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

// MaxPool (kMax) and SumPool: features [n_in, C] over a map to
// num_out_rows rows.
template <typename T, bool kMax>
class MapPoolGpuOp : public SparseAsyncOpKernel {
 public:
  explicit MapPoolGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), validate_map_(GetValidateMap(context)) {
    if (!kMax) OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& features = context->input(0);
    int64_t n_out;
    if (!CheckMatrix(context, features, "features") ||
        !GetRowCount(context, 4, "num_out_rows", &n_out) ||
        !CheckKernelMapShapes(context, 1)) {
      return done();
    }
    const gpu::DeviceKernelMap map = DeviceMap(context, 1);
    const int64_t n_in = features.dim_size(0), c = features.dim_size(1);
    Tensor *output = nullptr, *argmax = nullptr;
    DeviceResult<gpu::KernelMapCheck> check;
    if (!AllocateOutput(context, 0, {n_out, c}, &output) ||
        (kMax && !AllocateOutput(context, 1, {n_out, c}, &argmax)) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status =
        kMax
            ? gpu::MaxPool<T>(features.flat<T>().data(), n_in, c, map, n_out,
                              output->flat<T>().data(),
                              argmax->flat<int32_t>().data(), StreamOf(context))
            : gpu::SumPool<T>(features.flat<T>().data(), n_in, c, map, n_out,
                              average_, output->flat<T>().data(),
                              StreamOf(context));
    if (Failed(context, status)) return done();
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
  bool average_ = false;
};

template <typename T>
class SumPoolTransposeGpuOp : public SparseAsyncOpKernel {
 public:
  explicit SumPoolTransposeGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context), validate_map_(GetValidateMap(context)) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& features = context->input(0);
    int64_t n_in;
    if (!CheckMatrix(context, features, "features") ||
        !GetRowCount(context, 4, "num_in_rows", &n_in) ||
        !CheckKernelMapShapes(context, 1)) {
      return done();
    }
    const gpu::DeviceKernelMap map = DeviceMap(context, 1);
    const int64_t n_out = features.dim_size(0), c = features.dim_size(1);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::KernelMapCheck> check;
    const size_t bytes = gpu::SumPoolTransposeWorkspaceBytes<T>(
        map.num_offsets, map.num_pairs, n_in, n_out);
    if (!AllocateOutput(context, 0, {n_in, c}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !StartMapCheck(context, validate_map_, map, n_in, n_out, &check)) {
      return done();
    }
    const Status status = gpu::SumPoolTranspose<T>(
        features.flat<T>().data(), n_out, c, map, n_in, average_,
        output->flat<T>().data(), BytesOf(workspace), bytes, StreamOf(context),
        MapCheckOrNull(check));
    if (Failed(context, status)) return done();
    FinishMapCheck(context, std::move(check), map, n_in, n_out,
                   std::move(done));
  }

 private:
  const bool validate_map_;
  bool average_ = false;
};

template <typename T>
class MaxPoolGradGpuOp : public SparseAsyncOpKernel {
 public:
  using SparseAsyncOpKernel::SparseAsyncOpKernel;

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& grad = context->input(0);
    const Tensor& argmax = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return done();
    if (argmax.shape() != grad.shape()) {
      context->CtxFailure(absl::InvalidArgumentError(
          "argmax must have the shape of grad_output " +
          grad.shape().DebugString() + ", got " +
          argmax.shape().DebugString()));
      return done();
    }
    int64_t n_in;
    if (!GetRowCount(context, 2, "num_in_rows", &n_in)) return done();
    const int64_t n_out = grad.dim_size(0), c = grad.dim_size(1);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::IndexCheck> check;
    const size_t bytes = gpu::MaxPoolGradWorkspaceBytes<T>(n_out, c, n_in);
    if (!AllocateOutput(context, 0, {n_in, c}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &check)) {
      return done();
    }
    const Status status = gpu::MaxPoolGrad<T>(
        grad.flat<T>().data(), argmax.flat<int32_t>().data(), c, n_out, n_in,
        output->flat<T>().data(), check.on_device(), BytesOf(workspace), bytes,
        StreamOf(context));
    if (Failed(context, status)) return done();
    FinishWithResult(
        context, std::move(check),
        [n_in](const gpu::IndexCheck& result) {
          return gpu::ArgmaxCheckStatus(result, n_in);
        },
        std::move(done));
  }
};

// GlobalMaxPool (kMax) and GlobalSumPool: features [n, C] by batch_index
// into num_batches rows.
template <typename T, bool kMax>
class GlobalPoolGpuOp : public SparseAsyncOpKernel {
 public:
  explicit GlobalPoolGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context) {
    if (!kMax) OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& features = context->input(0);
    const Tensor& batch = context->input(1);
    int64_t B;
    if (!CheckMatrix(context, features, "features") ||
        !GetRowCount(context, 2, "num_batches", &B)) {
      return done();
    }
    const int64_t n = features.dim_size(0), c = features.dim_size(1);
    if (!CheckBatchIndexShape(context, batch, n)) return done();
    Tensor *output = nullptr, *argmax = nullptr;
    Tensor workspace;
    DeviceResult<gpu::IndexCheck> check;
    const size_t bytes = gpu::GlobalPoolWorkspaceBytes<T>(n, c, B);
    if (!AllocateOutput(context, 0, {B, c}, &output) ||
        (kMax && !AllocateOutput(context, 1, {B, c}, &argmax)) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &check)) {
      return done();
    }
    const T* in = features.flat<T>().data();
    const int32_t* b = batch.flat<int32_t>().data();
    const Status status =
        kMax ? gpu::GlobalMaxPool<T>(in, n, c, b, B, output->flat<T>().data(),
                                     argmax->flat<int32_t>().data(),
                                     check.on_device(), BytesOf(workspace),
                                     bytes, StreamOf(context))
             : gpu::GlobalSumPool<T>(in, n, c, b, B, average_,
                                     output->flat<T>().data(),
                                     check.on_device(), BytesOf(workspace),
                                     bytes, StreamOf(context));
    if (Failed(context, status)) return done();
    FinishWithResult(
        context, std::move(check),
        [B](const gpu::IndexCheck& result) {
          return gpu::BatchCheckStatus(result, B);
        },
        std::move(done));
  }

 private:
  bool average_ = false;
};

template <typename T>
class GlobalSumPoolGradGpuOp : public SparseAsyncOpKernel {
 public:
  explicit GlobalSumPoolGradGpuOp(OpKernelConstruction* context)
      : SparseAsyncOpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("average", &average_));
  }

  void ComputeAsyncChecked(OpKernelContext* context,
                           DoneCallback done) override {
    const Tensor& grad = context->input(0);
    const Tensor& batch = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return done();
    if (batch.dims() != 1 || batch.dim_size(0) >= kMaxRows) {
      context->CtxFailure(absl::InvalidArgumentError(
          "batch_index must be a vector of fewer than 2^31 - 1 entries, got "
          "shape " +
          batch.shape().DebugString()));
      return done();
    }
    // One row of grad_output per batch item.
    const int64_t n = batch.dim_size(0), c = grad.dim_size(1),
                  B = grad.dim_size(0);
    Tensor* output = nullptr;
    Tensor workspace;
    DeviceResult<gpu::IndexCheck> check;
    const size_t bytes = gpu::GlobalSumPoolGradWorkspaceBytes(B, c);
    if (!AllocateOutput(context, 0, {n, c}, &output) ||
        !AllocateDeviceBytes(context, bytes, &workspace) ||
        !AllocateResult(context, &check)) {
      return done();
    }
    const Status status = gpu::GlobalSumPoolGrad<T>(
        grad.flat<T>().data(), c, batch.flat<int32_t>().data(), n, B, average_,
        output->flat<T>().data(), check.on_device(), BytesOf(workspace), bytes,
        StreamOf(context));
    if (Failed(context, status)) return done();
    FinishWithResult(
        context, std::move(check),
        [B](const gpu::IndexCheck& result) {
          return gpu::BatchCheckStatus(result, B);
        },
        std::move(done));
  }

 private:
  bool average_ = false;
};

#define SPARSE_OPS_REGISTER_GPU(T)                            \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>MaxPool")           \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_out_rows"),    \
                          MapPoolGpuOp<T, true>);             \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>SumPool")           \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_out_rows"),    \
                          MapPoolGpuOp<T, false>);            \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>SumPoolTranspose")  \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_in_rows"),     \
                          SumPoolTransposeGpuOp<T>);          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>MaxPoolGrad")       \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_in_rows"),     \
                          MaxPoolGradGpuOp<T>);               \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalMaxPool")     \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_batches"),     \
                          GlobalPoolGpuOp<T, true>);          \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalSumPool")     \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T")         \
                              .HostMemory("num_batches"),     \
                          GlobalPoolGpuOp<T, false>);         \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>GlobalSumPoolGrad") \
                              .Device(DEVICE_GPU)             \
                              .TypeConstraint<T>("T"),        \
                          GlobalSumPoolGradGpuOp<T>);
SPARSE_OPS_REGISTER_GPU(float)
SPARSE_OPS_REGISTER_GPU(double)
#undef SPARSE_OPS_REGISTER_GPU

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
