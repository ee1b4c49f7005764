// Shared helpers of the TensorFlow glue: the core's ParallelFor on TF's
// intra-op thread pool, and turning a core Status into an op error.
#ifndef SPARSE_OPS_KERNELS_TF_GLUE_H_
#define SPARSE_OPS_KERNELS_TF_GLUE_H_

#include <algorithm>
#include <deque>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/kernel_map.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

namespace sparse_ops {

inline ParallelFor IntraOpParallelFor(tensorflow::OpKernelContext* context) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](int64_t n, int64_t cost,
                   const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    workers->ParallelFor(n, cost, fn);
  };
}

// Base of every kernel: Compute runs ComputeChecked and turns a failed host
// allocation (std::bad_alloc from a core buffer) into ResourceExhausted
// instead of terminating the process. Core buffers allocated inside
// parallel-for units are bounded by the inputs' sizes and are not covered.
class SparseOpKernel : public tensorflow::OpKernel {
 public:
  using tensorflow::OpKernel::OpKernel;

  void Compute(tensorflow::OpKernelContext* context) final {
    try {
      ComputeChecked(context);
    } catch (const std::bad_alloc&) {
      context->CtxFailure(absl::ResourceExhaustedError(
          name() + ": out of host memory for a temporary buffer"));
    }
  }

 protected:
  virtual void ComputeChecked(tensorflow::OpKernelContext* context) = 0;
};

// Temporary memory for the core's Allocate callback: TensorFlow's
// allocator, the tensors kept alive as long as this object.
class TempAllocator {
 public:
  explicit TempAllocator(tensorflow::OpKernelContext* context)
      : context_(context) {}

  Allocate callback() {
    return [this](int64_t bytes) -> void* {
      tensorflow::Tensor tensor;
      // One byte at least: an empty tensor has no data pointer, and nullptr
      // means "no memory" to the core.
      if (!context_
               ->allocate_temp(
                   tensorflow::DT_INT8,
                   tensorflow::TensorShape({std::max<int64_t>(bytes, 1)}),
                   &tensor)
               .ok()) {
        return nullptr;
      }
      tensors_.push_back(std::move(tensor));
      return tensors_.back().flat<int8_t>().data();
    };
  }

 private:
  tensorflow::OpKernelContext* context_;
  std::deque<tensorflow::Tensor> tensors_;  // stable addresses
};

// The TensorFlow error of a failed core Status.
inline absl::Status ToTfStatus(const Status& status) {
  switch (status.kind()) {
    case Status::Kind::kOk: return absl::OkStatus();
    case Status::Kind::kOutOfMemory:
      return absl::ResourceExhaustedError(status.message());
    case Status::Kind::kInternal: return absl::InternalError(status.message());
    case Status::Kind::kBadInput: break;
  }
  return absl::InvalidArgumentError(status.message());
}

#define SPARSE_OPS_RETURN_IF_CORE_ERROR(context, expr) \
  OP_REQUIRES_OK(context, ::sparse_ops::ToTfStatus(expr))

// Builds a shape, failing the op (instead of aborting the process) when the
// element count overflows.
inline bool MakeShape(tensorflow::OpKernelContext* context,
                      std::vector<int64_t> dims,
                      tensorflow::TensorShape* shape) {
  const absl::Status status =
      tensorflow::TensorShape::BuildTensorShape(dims, shape);
  if (!status.ok()) {
    context->CtxFailure(absl::InvalidArgumentError(
        "the result would be too large: " + std::string(status.message())));
    return false;
  }
  return true;
}

// Allocates an output or temporary tensor of the given dims, failing the op
// cleanly on overflow or when memory runs out.
inline bool AllocateOutput(tensorflow::OpKernelContext* context, int index,
                           std::vector<int64_t> dims,
                           tensorflow::Tensor** out) {
  tensorflow::TensorShape shape;
  if (!MakeShape(context, std::move(dims), &shape)) return false;
  const absl::Status status = context->allocate_output(index, shape, out);
  if (!status.ok()) context->CtxFailure(status);
  return status.ok();
}

inline bool AllocateTemp(tensorflow::OpKernelContext* context,
                         tensorflow::DataType type, std::vector<int64_t> dims,
                         tensorflow::Tensor* out) {
  tensorflow::TensorShape shape;
  if (!MakeShape(context, std::move(dims), &shape)) return false;
  const absl::Status status = context->allocate_temp(type, shape, out);
  if (!status.ok()) context->CtxFailure(status);
  return status.ok();
}

// Checks a coordinates input's shape: int32 [N, 1 + D] with N below 2^31.
inline bool CheckCoordinatesShape(tensorflow::OpKernelContext* context,
                                  const tensorflow::Tensor& t,
                                  const char* name) {
  if (t.dims() != 2 || t.dim_size(1) < 2 || t.dim_size(1) > kMaxDims) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) +
        " must be [N, 1 + D] with 1 <= D <= " + std::to_string(kMaxDims - 1) +
        " (column 0 the batch index), got "
        "shape " +
        t.shape().DebugString()));
    return false;
  }
  if (t.dim_size(0) >= kMaxRows) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " has too many rows for int32 row indices: " +
        std::to_string(t.dim_size(0))));
    return false;
  }
  return true;
}

// CheckCoordinatesShape, then the values on the host: no negative batch
// index.
inline bool CheckCoordinates(tensorflow::OpKernelContext* context,
                             const tensorflow::Tensor& t, const char* name) {
  if (!CheckCoordinatesShape(context, t, name)) return false;
  const int64_t bad =
      FindNegativeBatch(t.flat<int32_t>().data(), t.dim_size(0), t.dim_size(1));
  if (bad >= 0) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " row " + std::to_string(bad) +
        " has a negative batch index " +
        std::to_string(t.flat<int32_t>()(bad * t.dim_size(1)))));
    return false;
  }
  return true;
}

// The coordinates inputs of CoordinateUnion: each checked by `check`
// (CheckCoordinates on the host, CheckCoordinatesShape where the values are
// on the device), all of one width, fewer than kMaxRows rows together.
// Fills the inputs' data pointers and row counts.
template <typename Check>
bool CheckUnionInputs(tensorflow::OpKernelContext* context, Check check,
                      std::vector<const int32_t*>* data,
                      std::vector<int64_t>* sizes) {
  tensorflow::OpInputList inputs;
  const absl::Status listed = context->input_list("coordinates", &inputs);
  if (!listed.ok()) {
    context->CtxFailure(listed);
    return false;
  }
  int64_t total = 0;
  for (int i = 0; i < inputs.size(); ++i) {
    const std::string name = "coordinates[" + std::to_string(i) + "]";
    if (!check(context, inputs[i], name.c_str())) return false;
    if (inputs[i].dim_size(1) != inputs[0].dim_size(1)) {
      context->CtxFailure(absl::InvalidArgumentError(
          "every coordinates input must have the same number of columns: "
          "coordinates[0] "
          "has " +
          std::to_string(inputs[0].dim_size(1)) + ", " + name + " has " +
          std::to_string(inputs[i].dim_size(1))));
      return false;
    }
    data->push_back(inputs[i].flat<int32_t>().data());
    sizes->push_back(inputs[i].dim_size(0));
    total += inputs[i].dim_size(0);
  }
  if (total >= kMaxRows) {
    context->CtxFailure(
        absl::InvalidArgumentError("the coordinates inputs have too many rows "
                                   "together for int32 row indices: " +
                                   std::to_string(total)));
    return false;
  }
  return true;
}

// Checks a stride input: int32 [D], every entry >= 1.
inline bool CheckStride(tensorflow::OpKernelContext* context,
                        const tensorflow::Tensor& t, int64_t d) {
  if (t.dims() != 1 || t.dim_size(0) != d) {
    context->CtxFailure(absl::InvalidArgumentError(
        "stride must be a vector of " + std::to_string(d) +
        " entries (one per spatial axis), got shape " +
        t.shape().DebugString()));
    return false;
  }
  for (int64_t a = 0; a < d; ++a) {
    if (t.flat<int32_t>()(a) < 1) {
      context->CtxFailure(
          absl::InvalidArgumentError("stride entries must be >= 1, got " +
                                     std::to_string(t.flat<int32_t>()(a))));
      return false;
    }
  }
  return true;
}

// Checks an offsets input: int32 [K, D].
inline bool CheckOffsets(tensorflow::OpKernelContext* context,
                         const tensorflow::Tensor& t, int64_t d) {
  if (t.dims() != 2 || t.dim_size(1) != d) {
    context->CtxFailure(absl::InvalidArgumentError(
        "offsets must be [K, " + std::to_string(d) +
        "] (one column per spatial axis), got shape " +
        t.shape().DebugString()));
    return false;
  }
  return true;
}

// Per-thread work buffers hold blocks of rows; this bounds their size.
constexpr int64_t kMaxChannels = 1 << 16;

// Checks the kernel map inputs (offset_splits, in_rows, out_rows at
// `first`, `first` + 1, `first` + 2) against the row counts and returns a
// view of them; the map may come from a user, so every index is checked.
// The shapes of a kernel map's inputs (offset_splits, in_rows, out_rows at
// `first`, `first` + 1, `first` + 2); the values are checked by the device.
inline bool CheckKernelMapShapes(tensorflow::OpKernelContext* context,
                                 int first) {
  const tensorflow::Tensor& splits = context->input(first);
  const tensorflow::Tensor& in_rows = context->input(first + 1);
  const tensorflow::Tensor& out_rows = context->input(first + 2);
  if (splits.dims() != 1 || splits.dim_size(0) < 1 || in_rows.dims() != 1 ||
      out_rows.dims() != 1 || in_rows.dim_size(0) != out_rows.dim_size(0)) {
    context->CtxFailure(absl::InvalidArgumentError(
        "kernel map must be offset_splits [K + 1], in_rows [P] and out_rows "
        "[P], got shapes " +
        splits.shape().DebugString() + ", " + in_rows.shape().DebugString() +
        ", " + out_rows.shape().DebugString()));
    return false;
  }
  return true;
}

inline bool GetKernelMap(tensorflow::OpKernelContext* context, int first,
                         int64_t n_in, int64_t n_out, KernelMapView* map) {
  if (!CheckKernelMapShapes(context, first)) return false;
  const tensorflow::Tensor& splits = context->input(first);
  const tensorflow::Tensor& in_rows = context->input(first + 1);
  const tensorflow::Tensor& out_rows = context->input(first + 2);
  *map = KernelMapView{splits.flat<int64_t>().data(),
                       in_rows.flat<int32_t>().data(),
                       out_rows.flat<int32_t>().data(), splits.dim_size(0) - 1};
  const Status status = ValidateKernelMap(*map, in_rows.dim_size(0), n_in,
                                          n_out, IntraOpParallelFor(context));
  if (!status.ok()) {
    context->CtxFailure(ToTfStatus(status));
    return false;
  }
  return true;
}

// A features-like input: [rows < 2^31 - 1, channels <= kMaxChannels].
inline bool CheckMatrix(tensorflow::OpKernelContext* context,
                        const tensorflow::Tensor& t, const char* name) {
  if (t.dims() != 2) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " must be a matrix [rows, channels], got shape " +
        t.shape().DebugString()));
    return false;
  }
  if (t.dim_size(0) >= kMaxRows) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " has too many rows for int32 row indices: " +
        std::to_string(t.dim_size(0))));
    return false;
  }
  if (t.dim_size(1) > kMaxChannels) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " has " + std::to_string(t.dim_size(1)) +
        " channels; at most " + std::to_string(kMaxChannels) +
        " are supported"));
    return false;
  }
  return true;
}

// The inputs of Attention: features [n, C], coordinates [n, 1 + D] checked
// by `check` (as in CheckUnionInputs), k a scalar >= 0 (on the host).
template <typename Check>
bool CheckAttentionInputs(tensorflow::OpKernelContext* context, Check check) {
  const tensorflow::Tensor& features = context->input(0);
  const tensorflow::Tensor& coordinates = context->input(1);
  const tensorflow::Tensor& k = context->input(2);
  if (!CheckMatrix(context, features, "features")) return false;
  if (!check(context, coordinates, "coordinates")) return false;
  if (coordinates.dim_size(0) != features.dim_size(0)) {
    context->CtxFailure(absl::InvalidArgumentError(
        "features and coordinates must have the same number of rows, got " +
        std::to_string(features.dim_size(0)) + " and " +
        std::to_string(coordinates.dim_size(0))));
    return false;
  }
  if (k.dims() != 0 || k.scalar<int64_t>()() < 0) {
    context->CtxFailure(absl::InvalidArgumentError(
        "k must be a scalar >= 0, got " +
        (k.dims() == 0 ? std::to_string(k.scalar<int64_t>()())
                       : "shape " + k.shape().DebugString())));
    return false;
  }
  return true;
}

// Checks a conv kernel [K, c_in, c_out] against the map's offset count and a
// features input (its channels are dimension features_dim of the kernel).
inline bool CheckConvKernel(tensorflow::OpKernelContext* context,
                            const tensorflow::Tensor& kernel,
                            int64_t num_offsets,
                            const tensorflow::Tensor& features,
                            int features_dim, const char* features_name) {
  if (kernel.dims() != 3 || kernel.dim_size(0) != num_offsets ||
      kernel.dim_size(features_dim) != features.dim_size(1) ||
      kernel.dim_size(3 - features_dim) > kMaxChannels) {
    context->CtxFailure(absl::InvalidArgumentError(
        "kernel must be [K, C_in, C_out] with K = " +
        std::to_string(num_offsets) + " kernel offsets and " +
        (features_dim == 1 ? "C_in" : "C_out") + " = " +
        std::to_string(features.dim_size(1)) + " channels of " + features_name +
        ", got shape " + kernel.shape().DebugString()));
    return false;
  }
  return true;
}

// A batch_index input: int32 [rows].
inline bool CheckBatchIndexShape(tensorflow::OpKernelContext* context,
                                 const tensorflow::Tensor& batch,
                                 int64_t rows) {
  if (batch.dims() != 1 || batch.dim_size(0) != rows) {
    context->CtxFailure(absl::InvalidArgumentError(
        "batch_index must be a vector of " + std::to_string(rows) +
        " entries (one per row), got shape " + batch.shape().DebugString()));
    return false;
  }
  return true;
}

// Reads a scalar row count input.
inline bool GetRowCount(tensorflow::OpKernelContext* context, int index,
                        const char* name, int64_t* rows) {
  const tensorflow::Tensor& t = context->input(index);
  if (t.dims() != 0 || t.scalar<int64_t>()() < 0 ||
      t.scalar<int64_t>()() >= kMaxRows) {
    context->CtxFailure(absl::InvalidArgumentError(
        std::string(name) + " must be a scalar in [0, 2^31 - 1), got " +
        (t.dims() == 0 ? std::to_string(t.scalar<int64_t>()())
                       : "shape " + t.shape().DebugString())));
    return false;
  }
  *rows = t.scalar<int64_t>()();
  return true;
}

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_TF_GLUE_H_
