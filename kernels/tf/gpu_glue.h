// The TensorFlow side of the GPU kernels (GOOGLE_CUDA builds only): the
// stream TensorFlow gives an op, temporaries from its allocator, and the one
// host read an op may make (a device struct copied back, then the rest of
// the op on a TensorFlow callback thread, as TF's own Where op does).
// Compiled by the host compiler; the CUDA work is in kernels/cuda.
#ifndef SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_
#define SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_

#if GOOGLE_CUDA

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <utility>

#include "kernels/cuda/core_gpu.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/common_runtime/device/device_event_mgr.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/stream_executor.h"

namespace sparse_ops {

inline gpu::GpuStream StreamOf(tensorflow::OpKernelContext* context) {
  return static_cast<gpu::GpuStream>(context->op_device_context()
                                         ->stream()
                                         ->platform_specific_handle()
                                         .stream);
}

// A device temporary of `bytes` bytes (the cores' workspaces and result
// structs); TensorFlow's GPU allocator orders its reuse on the op's stream.
// Sizes past int64 (a core's saturated SIZE_MAX included) are refused.
inline bool AllocateDeviceBytes(tensorflow::OpKernelContext* context,
                                size_t bytes, tensorflow::Tensor* out) {
  if (bytes > static_cast<size_t>(INT64_MAX)) {
    context->CtxFailure(absl::ResourceExhaustedError(
        "sparse_ops: a GPU workspace would exceed 2^63 bytes"));
    return false;
  }
  return AllocateTemp(context, tensorflow::DT_INT8,
                      {std::max<int64_t>(static_cast<int64_t>(bytes), 1)}, out);
}

inline void* BytesOf(tensorflow::Tensor& t) { return t.flat<int8_t>().data(); }

// Page-locked host memory for a struct the device writes back.
template <typename S>
bool AllocateHostStruct(tensorflow::OpKernelContext* context,
                        tensorflow::Tensor* out) {
  tensorflow::AllocatorAttributes attributes;
  attributes.set_on_host(true);
  attributes.set_gpu_compatible(true);
  const absl::Status status = context->allocate_temp(
      tensorflow::DT_INT8,
      tensorflow::TensorShape({static_cast<int64_t>(sizeof(S))}), out,
      attributes);
  if (!status.ok()) context->CtxFailure(status);
  return status.ok();
}

// Runs `body` on a TensorFlow callback thread once everything enqueued on
// the op's stream so far has finished, with the op's GPU context active,
// then ends the op (done). `body` must not block; it may allocate outputs
// and enqueue more work.
inline void ThenOnHost(tensorflow::OpKernelContext* context,
                       std::function<void()> body,
                       tensorflow::AsyncOpKernel::DoneCallback done) {
  auto* stream = context->op_device_context()->stream();
  context->device()
      ->tensorflow_accelerator_device_info()
      ->event_mgr->ThenExecute(stream, [context, stream, body = std::move(body),
                                        done = std::move(done)]() {
        auto activation = stream->parent()->Activate();
        try {
          body();
        } catch (const std::bad_alloc&) {
          context->CtxFailure(absl::ResourceExhaustedError(
              "sparse_ops: out of host memory after a GPU kernel"));
        }
        done();
      });
}

// Fails the op with a core Status (of enqueueing work); true if it did.
inline bool Failed(tensorflow::OpKernelContext* context, const Status& status) {
  if (!status.ok()) context->CtxFailure(ToTfStatus(status));
  return !status.ok();
}

// A result struct the device writes (a check of index inputs, a count)
// and the op reads back once, after its work: page-locked host memory.
template <typename S>
struct DeviceResult {
  tensorflow::Tensor device, host;
  S* on_device() { return static_cast<S*>(BytesOf(device)); }
  const S& on_host() { return *static_cast<const S*>(BytesOf(host)); }
};

template <typename S>
bool AllocateResult(tensorflow::OpKernelContext* context,
                    DeviceResult<S>* result) {
  return AllocateDeviceBytes(context, sizeof(S), &result->device) &&
         AllocateHostStruct<S>(context, &result->host);
}

// Copies `result` to the host behind the work enqueued so far, then ends
// the op on a callback thread with then(host copy) (a core Status: the
// op's error, if any).
template <typename S, typename Then>
void FinishWithResult(tensorflow::OpKernelContext* context,
                      DeviceResult<S> result, Then then,
                      tensorflow::AsyncOpKernel::DoneCallback done) {
  if (Failed(context,
             gpu::CopyToHost(BytesOf(result.host), BytesOf(result.device),
                             sizeof(S), StreamOf(context)))) {
    done();
    return;
  }
  ThenOnHost(
      context,
      [context, result, then]() mutable {
        Failed(context, then(result.on_host()));
      },
      std::move(done));
}

// The kernel map inputs at `first` (shapes checked) as the core's view.
inline gpu::DeviceKernelMap DeviceMap(tensorflow::OpKernelContext* context,
                                      int first) {
  const tensorflow::Tensor& splits = context->input(first);
  const tensorflow::Tensor& in_rows = context->input(first + 1);
  return gpu::DeviceKernelMap{splits.flat<int64_t>().data(),
                              in_rows.flat<int32_t>().data(),
                              context->input(first + 2).flat<int32_t>().data(),
                              splits.dim_size(0) - 1, in_rows.dim_size(0)};
}

// The validate_map attr of the map-reading ops.
inline bool GetValidateMap(tensorflow::OpKernelConstruction* context) {
  bool validate = true;
  if (!context->GetAttr("validate_map", &validate).ok()) return true;
  return validate;
}

// With `validate`, enqueues the check of a kernel map that may come from a
// user; the op enqueues its work (which reads only in-range rows whatever
// the map holds) and ends with FinishMapCheck, which fails with the CPU's
// message. Without, both do nothing but end the op.
inline bool StartMapCheck(tensorflow::OpKernelContext* context, bool validate,
                          const gpu::DeviceKernelMap& map, int64_t n_in,
                          int64_t n_out,
                          DeviceResult<gpu::KernelMapCheck>* check) {
  if (!validate) return true;
  if (!AllocateResult(context, check)) return false;
  return !Failed(context,
                 gpu::CheckKernelMap(map, n_in, n_out, check->on_device(),
                                     StreamOf(context)));
}

// The check for a transposing core (repeated input rows), or nullptr.
inline gpu::KernelMapCheck* MapCheckOrNull(
    DeviceResult<gpu::KernelMapCheck>& check) {
  return check.device.IsInitialized() ? check.on_device() : nullptr;
}

inline void FinishMapCheck(tensorflow::OpKernelContext* context,
                           DeviceResult<gpu::KernelMapCheck> check,
                           const gpu::DeviceKernelMap& map, int64_t n_in,
                           int64_t n_out,
                           tensorflow::AsyncOpKernel::DoneCallback done) {
  if (!check.device.IsInitialized()) {  // not validating: done once enqueued
    done();
    return;
  }
  const int64_t pairs = map.num_pairs;
  FinishWithResult(
      context, std::move(check),
      [pairs, n_in, n_out](const gpu::KernelMapCheck& result) {
        return gpu::KernelMapCheckStatus(result, pairs, n_in, n_out);
      },
      std::move(done));
}

// An async GPU kernel that, like SparseOpKernel, turns a host
// std::bad_alloc into ResourceExhausted.
class SparseAsyncOpKernel : public tensorflow::AsyncOpKernel {
 public:
  using tensorflow::AsyncOpKernel::AsyncOpKernel;

  void ComputeAsync(tensorflow::OpKernelContext* context,
                    DoneCallback done) final {
    // done at most once, even if an exception follows a scheduled callback.
    auto called = std::make_shared<std::atomic<bool>>(false);
    DoneCallback once = [called, done = std::move(done)]() {
      if (!called->exchange(true)) done();
    };
    try {
      ComputeAsyncChecked(context, once);
    } catch (const std::bad_alloc&) {
      if (!called->load()) {
        context->CtxFailure(absl::ResourceExhaustedError(
            name() + ": out of host memory for a temporary buffer"));
        once();
      }
    }
  }

 protected:
  // Must call done exactly once, on every path.
  virtual void ComputeAsyncChecked(tensorflow::OpKernelContext* context,
                                   DoneCallback done) = 0;
};

}  // namespace sparse_ops

#endif  // GOOGLE_CUDA
#endif  // SPARSE_OPS_KERNELS_TF_GPU_GLUE_H_
