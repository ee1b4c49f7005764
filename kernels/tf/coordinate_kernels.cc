// CPU kernels of the coordinate ops: validate, allocate, call the core.
#include <memory>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Allocates an int32 [n, dims] coordinates output and unpacks keys into it.
void OutputCoordinates(OpKernelContext* context, const KeyPacker& packer,
                       const uint64_t* keys, int64_t n) {
  Tensor* out = nullptr;
  OP_REQUIRES_OK(context, context->allocate_output(
                              0, TensorShape({n, packer.dims()}), &out));
  UnpackKeys(packer, keys, n, out->flat<int32_t>().data(),
             IntraOpParallelFor(context));
}

// allocate_temp with the core's Status.
Status AllocateTempStatus(OpKernelContext* context, tensorflow::DataType type,
                          int64_t n, Tensor* out) {
  const absl::Status status =
      context->allocate_temp(type, TensorShape({n}), out);
  return status.ok() ? Status::Ok() : Status::Error(std::string(status.message()));
}

// Fails unless the rows of coords are unique (a hash table built and
// dropped: the same check the input side gets while its table is built).
bool CheckUnique(OpKernelContext* context, const int32_t* coords, int64_t n,
                 int dims, const std::string& name) {
  KeyPacker packer(dims);
  packer.CoverRows(coords, n);
  Status status = packer.Finalize();
  const int64_t capacity = CoordinateTable::CapacityFor(n);
  Tensor keys, rows;
  if (status.ok()) {
    status = AllocateTempStatus(context, tensorflow::DT_UINT64, capacity, &keys);
  }
  if (status.ok()) {
    status = AllocateTempStatus(context, tensorflow::DT_INT32, capacity, &rows);
  }
  if (status.ok()) {
    CoordinateTable table(keys.flat<uint64_t>().data(),
                          rows.flat<int32_t>().data(), capacity);
    status = table.Build(coords, n, packer, IntraOpParallelFor(context));
  }
  if (!status.ok()) {
    context->CtxFailure(absl::InvalidArgumentError(name + ": " + status.message()));
    return false;
  }
  return true;
}

}  // namespace

// Neighbour tables of chunks of offsets: by merging sorted rows where they
// are sorted (what every coordinate op outputs), else through a hash table
// of the input rows, built once.
class NeighbourFinder {
 public:
  NeighbourFinder(OpKernelContext* context, const Tensor& in, const Tensor& out,
                  const Tensor& offsets, const Tensor& stride)
      : context_(context),
        in_(in.flat<int32_t>().data()),
        out_(out.flat<int32_t>().data()),
        n_in_(in.dim_size(0)),
        n_out_(out.dim_size(0)),
        dims_(in.dim_size(1)),
        offsets_(offsets.flat<int32_t>().data()),
        stride_(stride.flat<int32_t>().data()),
        packer_(dims_) {}

  // nbr [count, n_out] and counts [count] of offsets [first, first + count);
  // false when the op failed (duplicate rows, keys beyond 63 bits).
  bool Find(int64_t first, int64_t count, int32_t* nbr, int64_t* counts) {
    const KernelGeometry geometry{offsets_ + first * (dims_ - 1), count, stride_};
    const ParallelFor parallel_for = IntraOpParallelFor(context_);
    if (try_sorted_) {
      if (FindNeighboursSorted(in_, n_in_, out_, n_out_, dims_, geometry, nbr,
                               counts, parallel_for)) {
        return true;
      }
      try_sorted_ = false;  // rows out of order: hash from now on
    }
    if (table_ == nullptr && !BuildTable()) return false;
    // The same tensor passed twice (a submanifold convolution) lets a
    // symmetric kernel probe half its offsets.
    const bool same = in_ == out_ && n_in_ == n_out_;
    FindNeighbours(*table_, packer_, out_, n_out_, geometry, same, nbr, counts,
                   parallel_for);
    return true;
  }

 private:
  bool BuildTable() {
    // One key layout for both sets: the input range is all a probe can hit.
    packer_.CoverRows(in_, n_in_);
    Status status = packer_.Finalize();
    const int64_t capacity = CoordinateTable::CapacityFor(n_in_);
    if (status.ok()) {
      status = AllocateTempStatus(context_, tensorflow::DT_UINT64, capacity, &keys_);
    }
    if (status.ok()) {
      status = AllocateTempStatus(context_, tensorflow::DT_INT32, capacity, &rows_);
    }
    if (!status.ok()) {
      context_->CtxFailure(absl::InvalidArgumentError(status.message()));
      return false;
    }
    table_ = std::make_unique<CoordinateTable>(
        keys_.flat<uint64_t>().data(), rows_.flat<int32_t>().data(), capacity);
    status = table_->Build(in_, n_in_, packer_, IntraOpParallelFor(context_));
    if (!status.ok()) {
      context_->CtxFailure(absl::InvalidArgumentError(status.message()));
      return false;
    }
    const bool same = in_ == out_ && n_in_ == n_out_;
    return same || CheckUnique(context_, out_, n_out_, dims_, "out_coordinates");
  }

  OpKernelContext* context_;
  const int32_t *in_, *out_;
  const int64_t n_in_, n_out_;
  const int dims_;
  const int32_t *offsets_, *stride_;
  bool try_sorted_ = true;
  KeyPacker packer_;
  Tensor keys_, rows_;
  std::unique_ptr<CoordinateTable> table_;
};

class KernelMapOp : public SparseOpKernel {
 public:
  explicit KernelMapOp(OpKernelConstruction* context) : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& in = context->input(0);
    const Tensor& out = context->input(1);
    const Tensor& offsets = context->input(2);
    const Tensor& stride = context->input(3);
    if (!CheckCoordinates(context, in, "in_coordinates")) return;
    if (!CheckCoordinates(context, out, "out_coordinates")) return;
    const int dims = in.dim_size(1);
    OP_REQUIRES(context, out.dim_size(1) == dims,
                absl::InvalidArgumentError(
                    "in_coordinates and out_coordinates must have the same "
                    "number of columns, got " + std::to_string(dims) +
                    " and " + std::to_string(out.dim_size(1))));
    if (!CheckOffsets(context, offsets, dims - 1)) return;
    if (!CheckStride(context, stride, dims - 1)) return;

    const int64_t n_in = in.dim_size(0), n_out = out.dim_size(0);
    const int64_t K = offsets.dim_size(0);
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    // The neighbour table [K, n_out], in chunks of offsets when it would
    // exceed the table budget (then each chunk is searched twice: to count
    // the pairs, then to write them once the outputs are allocated).
    const int64_t chunk = OffsetsPerChunk(K, n_out, TableBudget(n_in + n_out));
    Tensor neighbours;
    if (!AllocateTemp(context, tensorflow::DT_INT32, {std::min(chunk, K), n_out},
                      &neighbours)) {
      return;
    }
    int32_t* nbr = neighbours.flat<int32_t>().data();
    NeighbourFinder finder(context, in, out, offsets, stride);
    std::vector<int64_t> counts(K);
    // At least one search, so that the coordinates are checked (duplicate
    // sites, key width) even without offsets.
    for (int64_t k0 = 0; k0 < std::max<int64_t>(K, 1); k0 += chunk) {
      if (!finder.Find(k0, std::min(chunk, K - k0), nbr, counts.data() + k0)) return;
    }

    Tensor* splits = nullptr;
    if (!AllocateOutput(context, 0, {K + 1}, &splits)) return;
    int64_t* s = splits->flat<int64_t>().data();
    SplitsFromCounts(counts.data(), K, s);
    Tensor *in_rows = nullptr, *out_rows = nullptr;
    if (!AllocateOutput(context, 1, {s[K]}, &in_rows)) return;
    if (!AllocateOutput(context, 2, {s[K]}, &out_rows)) return;
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      const int64_t count = std::min(chunk, K - k0);
      if (chunk < K && !finder.Find(k0, count, nbr, counts.data() + k0)) return;
      FillPairs(nbr, count, n_out, s + k0, in_rows->flat<int32_t>().data(),
                out_rows->flat<int32_t>().data(), parallel_for);
    }
  }
};

class StridedCoordinatesOp : public SparseOpKernel {
 public:
  explicit StridedCoordinatesOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& in = context->input(0);
    const Tensor& stride = context->input(1);
    if (!CheckCoordinates(context, in, "coordinates")) return;
    const int dims = in.dim_size(1);
    if (!CheckStride(context, stride, dims - 1)) return;
    const int64_t n = in.dim_size(0);
    Tensor keys;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_UINT64,
                                                   TensorShape({n}), &keys));
    KeyPacker packer(dims);
    int64_t unique = 0;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, StridedKeys(in.flat<int32_t>().data(), n, dims,
                             stride.flat<int32_t>().data(), &packer,
                             keys.flat<uint64_t>().data(), &unique));
    OutputCoordinates(context, packer, keys.flat<uint64_t>().data(), unique);
  }
};

class GenerativeCoordinatesOp : public SparseOpKernel {
 public:
  explicit GenerativeCoordinatesOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& in = context->input(0);
    const Tensor& offsets = context->input(1);
    const Tensor& stride = context->input(2);
    if (!CheckCoordinates(context, in, "coordinates")) return;
    const int dims = in.dim_size(1);
    if (!CheckOffsets(context, offsets, dims - 1)) return;
    if (!CheckStride(context, stride, dims - 1)) return;
    const int64_t K = offsets.dim_size(0);
    KeyPacker packer(dims);
    // Candidate keys in chunks of a quarter of the table budget: 8 bytes
    // each, and the radix sort needs a second buffer.
    std::vector<uint64_t> keys;
    const KernelGeometry geometry{offsets.flat<int32_t>().data(), K,
                                  stride.flat<int32_t>().data()};
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, GenerativeKeys(in.flat<int32_t>().data(), in.dim_size(0), dims,
                                geometry, TableBudget(in.dim_size(0)) / 4, kMaxRows,
                                &packer,
                                &keys, IntraOpParallelFor(context)));
    OutputCoordinates(context, packer, keys.data(), static_cast<int64_t>(keys.size()));
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseOps>KernelMap").Device(DEVICE_CPU),
                        KernelMapOp);
REGISTER_KERNEL_BUILDER(
    Name("SparseOps>StridedCoordinates").Device(DEVICE_CPU),
    StridedCoordinatesOp);
REGISTER_KERNEL_BUILDER(
    Name("SparseOps>GenerativeCoordinates").Device(DEVICE_CPU),
    GenerativeCoordinatesOp);

}  // namespace sparse_ops
