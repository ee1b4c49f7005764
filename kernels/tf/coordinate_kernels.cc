// CPU kernels of the coordinate ops: validate, allocate, call the core.
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
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

class KernelMapOp : public OpKernel {
 public:
  explicit KernelMapOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
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
    const int32_t* in_coords = in.flat<int32_t>().data();
    const int32_t* out_coords = out.flat<int32_t>().data();
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    const KernelGeometry geometry{offsets.flat<int32_t>().data(), K,
                                  stride.flat<int32_t>().data()};
    Tensor neighbours;
    if (!AllocateTemp(context, tensorflow::DT_INT32, {K, n_out}, &neighbours)) {
      return;
    }
    int32_t* nbr = neighbours.flat<int32_t>().data();
    std::vector<int64_t> counts(K);
    // Sorted rows (what every coordinate op outputs) merge without a table.
    if (!FindNeighboursSorted(in_coords, n_in, out_coords, n_out, dims,
                              geometry, nbr, counts.data(), parallel_for)) {
      HashNeighbours(context, in_coords, n_in, out_coords, n_out, dims,
                     geometry, nbr, counts.data());
      if (!context->status().ok()) return;
    }

    Tensor* splits = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({K + 1}), &splits));
    int64_t* s = splits->flat<int64_t>().data();
    SplitsFromCounts(counts.data(), K, s);
    Tensor *in_rows = nullptr, *out_rows = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(1, TensorShape({s[K]}), &in_rows));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({s[K]}),
                                                     &out_rows));
    FillPairs(nbr, K, n_out, s, in_rows->flat<int32_t>().data(),
              out_rows->flat<int32_t>().data(), parallel_for);
  }

 private:
  // The neighbour table of rows in any order, from a hash table of the
  // input rows; fails the op on duplicate rows.
  void HashNeighbours(OpKernelContext* context, const int32_t* in_coords,
                      int64_t n_in, const int32_t* out_coords, int64_t n_out,
                      int dims, const KernelGeometry& geometry, int32_t* nbr,
                      int64_t* counts) {
    // One key layout for both sets: the input range is all a probe can hit.
    KeyPacker packer(dims);
    packer.CoverRows(in_coords, n_in);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(context, packer.Finalize());
    const int64_t capacity = CoordinateTable::CapacityFor(n_in);
    Tensor table_keys, table_rows;
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_UINT64,
                                                   TensorShape({capacity}),
                                                   &table_keys));
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_INT32,
                                                   TensorShape({capacity}),
                                                   &table_rows));
    CoordinateTable table(table_keys.flat<uint64_t>().data(),
                          table_rows.flat<int32_t>().data(), capacity);
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, table.Build(in_coords, n_in, packer, parallel_for));
    // The same tensor passed twice (a submanifold convolution) lets a
    // symmetric kernel probe half its offsets.
    const bool same = in_coords == out_coords && n_in == n_out;
    if (!same &&
        !CheckUnique(context, out_coords, n_out, dims, "out_coordinates")) {
      return;
    }
    FindNeighbours(table, packer, out_coords, n_out, geometry, same, nbr,
                   counts, parallel_for);
  }
};

class StridedCoordinatesOp : public OpKernel {
 public:
  explicit StridedCoordinatesOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
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

class GenerativeCoordinatesOp : public OpKernel {
 public:
  explicit GenerativeCoordinatesOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& in = context->input(0);
    const Tensor& offsets = context->input(1);
    const Tensor& stride = context->input(2);
    if (!CheckCoordinates(context, in, "coordinates")) return;
    const int dims = in.dim_size(1);
    if (!CheckOffsets(context, offsets, dims - 1)) return;
    if (!CheckStride(context, stride, dims - 1)) return;
    const int64_t n = in.dim_size(0), K = offsets.dim_size(0);
    Tensor keys;
    if (!AllocateTemp(context, tensorflow::DT_UINT64, {n, K}, &keys)) return;
    KeyPacker packer(dims);
    int64_t unique = 0;
    const KernelGeometry geometry{offsets.flat<int32_t>().data(), K,
                                  stride.flat<int32_t>().data()};
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context,
        GenerativeKeys(in.flat<int32_t>().data(), n, dims, geometry, &packer,
                       keys.flat<uint64_t>().data(), &unique,
                       IntraOpParallelFor(context)));
    OP_REQUIRES(context, unique < (int64_t{1} << 31) - 1,
                absl::InvalidArgumentError(
                    "generative convolution would create too many sites"));
    OutputCoordinates(context, packer, keys.flat<uint64_t>().data(), unique);
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
