// CPU kernels of the coordinate lookup and union ops: validate, allocate,
// call the core (kernels/core/points.h).
#include <numeric>
#include <string>
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/points.h"
#include "kernels/tf/glue.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace sparse_ops {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::OpOutputList;
using tensorflow::Tensor;
using tensorflow::TensorShape;

class CoordinateLookupOp : public SparseOpKernel {
 public:
  explicit CoordinateLookupOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& coordinates = context->input(0);
    const Tensor& queries = context->input(1);
    if (!CheckCoordinates(context, coordinates, "coordinates")) return;
    const int dims = coordinates.dim_size(1);
    // Queries may be anything int32 of the right width: a negative batch or
    // a site outside the set's range is just not found.
    OP_REQUIRES(context, queries.dims() == 2 && queries.dim_size(1) == dims,
                absl::InvalidArgumentError(
                    "queries must be [Q, " + std::to_string(dims) +
                    "] (the columns of coordinates), got shape " +
                    queries.shape().DebugString()));
    const int64_t n = coordinates.dim_size(0), q = queries.dim_size(0);
    const int32_t* coords = coordinates.flat<int32_t>().data();

    KeyPacker packer(dims);
    packer.CoverRows(coords, n);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(context, packer.Finalize());
    const int64_t capacity = CoordinateTable::CapacityFor(n);
    Tensor table_keys, table_rows;
    if (!AllocateTemp(context, tensorflow::DT_UINT64, {capacity},
                      &table_keys) ||
        !AllocateTemp(context, tensorflow::DT_INT32, {capacity}, &table_rows)) {
      return;
    }
    CoordinateTable table(table_keys.flat<uint64_t>().data(),
                          table_rows.flat<int32_t>().data(), capacity);
    const ParallelFor parallel_for = IntraOpParallelFor(context);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, table.Build(coords, n, packer, parallel_for));
    Tensor* rows = nullptr;
    if (!AllocateOutput(context, 0, {q}, &rows)) return;
    LookupRows(table, packer, queries.flat<int32_t>().data(), q,
               rows->flat<int32_t>().data(), parallel_for);
  }
};

class CoordinateUnionOp : public SparseOpKernel {
 public:
  explicit CoordinateUnionOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    std::vector<const int32_t*> data;
    std::vector<int64_t> sizes;
    if (!CheckUnionInputs(context, CheckCoordinates, &data, &sizes)) return;
    const int num_inputs = static_cast<int>(sizes.size());
    const int64_t total =
        std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
    const int dims = context->input(0).dim_size(1);
    Tensor rows, first;
    if (!AllocateTemp(context, tensorflow::DT_INT32, {total}, &rows) ||
        !AllocateTemp(context, tensorflow::DT_INT64, {total}, &first)) {
      return;
    }
    int64_t num_union = 0;
    const int64_t* first_data = first.flat<int64_t>().data();
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, UnionCoordinates(data.data(), sizes.data(), num_inputs, dims,
                                  rows.flat<int32_t>().data(),
                                  first.flat<int64_t>().data(), &num_union));

    Tensor* out = nullptr;
    if (!AllocateOutput(context, 0, {num_union, dims}, &out)) return;
    UnionSites(data.data(), sizes.data(), dims, first_data, num_union,
               out->flat<int32_t>().data());
    OpOutputList row_outputs;
    OP_REQUIRES_OK(context, context->output_list("rows", &row_outputs));
    const int32_t* all_rows = rows.flat<int32_t>().data();
    int64_t offset = 0;
    for (int i = 0; i < num_inputs; ++i) {
      Tensor* r = nullptr;
      OP_REQUIRES_OK(context,
                     row_outputs.allocate(i, TensorShape({sizes[i]}), &r));
      std::copy_n(all_rows + offset, sizes[i], r->flat<int32_t>().data());
      offset += sizes[i];
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseOps>CoordinateLookup").Device(DEVICE_CPU),
                        CoordinateLookupOp);
REGISTER_KERNEL_BUILDER(Name("SparseOps>CoordinateUnion").Device(DEVICE_CPU),
                        CoordinateUnionOp);

}  // namespace sparse_ops
