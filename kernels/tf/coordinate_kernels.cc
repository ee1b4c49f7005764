// CPU kernels of the coordinate ops: validate, allocate, call the core.
#include <vector>

#include "kernels/core/coordinates.h"
#include "kernels/core/kernel_map.h"
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

}  // namespace

class KernelMapOp : public SparseOpKernel {
 public:
  explicit KernelMapOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& in = context->input(0);
    const Tensor& out = context->input(1);
    const Tensor& offsets = context->input(2);
    const Tensor& stride = context->input(3);
    if (!CheckCoordinates(context, in, "in_coordinates")) return;
    if (!CheckCoordinates(context, out, "out_coordinates")) return;
    const int dims = in.dim_size(1);
    OP_REQUIRES(
        context, out.dim_size(1) == dims,
        absl::InvalidArgumentError(
            "in_coordinates and out_coordinates must have the same "
            "number of columns, got " +
            std::to_string(dims) + " and " + std::to_string(out.dim_size(1))));
    if (!CheckOffsets(context, offsets, dims - 1)) return;
    if (!CheckStride(context, stride, dims - 1)) return;

    const int64_t K = offsets.dim_size(0);
    TempAllocator temp(context);
    KernelMapSearch search(in.flat<int32_t>().data(), in.dim_size(0),
                           out.flat<int32_t>().data(), out.dim_size(0), dims,
                           KernelGeometry{offsets.flat<int32_t>().data(), K,
                                          stride.flat<int32_t>().data()},
                           temp.callback(), IntraOpParallelFor(context));
    std::vector<int64_t> counts(K);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(context, search.Count(counts.data()));
    Tensor* splits = nullptr;
    if (!AllocateOutput(context, 0, {K + 1}, &splits)) return;
    int64_t* s = splits->flat<int64_t>().data();
    SplitsFromCounts(counts.data(), K, s);
    Tensor *in_rows = nullptr, *out_rows = nullptr;
    if (!AllocateOutput(context, 1, {s[K]}, &in_rows)) return;
    if (!AllocateOutput(context, 2, {s[K]}, &out_rows)) return;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, search.Fill(s, in_rows->flat<int32_t>().data(),
                             out_rows->flat<int32_t>().data()));
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
        context,
        GenerativeKeys(in.flat<int32_t>().data(), in.dim_size(0), dims,
                       geometry, TableBudget(in.dim_size(0)) / 4, kMaxRows,
                       &packer, &keys, IntraOpParallelFor(context)));
    OutputCoordinates(context, packer, keys.data(),
                      static_cast<int64_t>(keys.size()));
  }
};

REGISTER_KERNEL_BUILDER(Name("SparseOps>KernelMap").Device(DEVICE_CPU),
                        KernelMapOp);
REGISTER_KERNEL_BUILDER(Name("SparseOps>StridedCoordinates").Device(DEVICE_CPU),
                        StridedCoordinatesOp);
REGISTER_KERNEL_BUILDER(
    Name("SparseOps>GenerativeCoordinates").Device(DEVICE_CPU),
    GenerativeCoordinatesOp);

}  // namespace sparse_ops
