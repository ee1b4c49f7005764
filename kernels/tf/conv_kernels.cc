// CPU kernels of the convolution ops: validate, allocate, call the core.
#include <string>
#include <type_traits>

#include "kernels/core/conv.h"
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

// The weight_path attr of the ops as the core's enum.
WeightPath GetWeightPath(OpKernelConstruction* context) {
  std::string name;
  if (!context->GetAttr("weight_path", &name).ok()) return WeightPath::kAuto;
  if (name == "dense") return WeightPath::kDense;
  if (name == "sparse") return WeightPath::kSparse;
  return WeightPath::kAuto;
}

// SparseConv of the core on the op's tensors; bfloat16 takes its own entry
// point, which may ask for temporary memory.
template <typename T>
void RunSparseConv(OpKernelContext* context, const Tensor& in, int64_t c_in,
                   const Tensor& kernel, int64_t c_out, bool transpose_weights,
                   const KernelMapView& map, int64_t n_out, Tensor* output,
                   WeightPath path) {
  if constexpr (std::is_same_v<T, tensorflow::bfloat16>) {
    TempAllocator temp(context);
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context,
        SparseConvBfloat16(in.flat<T>().data(), in.dim_size(0), c_in,
                           kernel.flat<T>().data(), c_out, transpose_weights,
                           map, n_out, output->flat<T>().data(),
                           temp.callback(), IntraOpParallelFor(context), path));
  } else {
    SparseConv<T>(in.flat<T>().data(), c_in, kernel.flat<T>().data(), c_out,
                  transpose_weights, map, n_out, output->flat<T>().data(),
                  IntraOpParallelFor(context), path);
  }
}

}  // namespace

template <typename T>
class ConvOp : public SparseOpKernel {
 public:
  explicit ConvOp(OpKernelConstruction* context)
      : SparseOpKernel(context), path_(GetWeightPath(context)) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& kernel = context->input(1);
    if (!CheckMatrix(context, features, "features")) return;
    int64_t n_out;
    if (!GetRowCount(context, 5, "num_out_rows", &n_out)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, features.dim_size(0), n_out, &map)) return;
    if (!CheckConvKernel(context, kernel, map.num_offsets, features, 1,
                         "features"))
      return;
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_out, c_out}, &output)) return;
    RunSparseConv<T>(context, features, c_in, kernel, c_out,
                     /*transpose_weights=*/false, map, n_out, output, path_);
  }

 private:
  const WeightPath path_;
};

template <typename T>
class ConvBackpropInputOp : public SparseOpKernel {
 public:
  explicit ConvBackpropInputOp(OpKernelConstruction* context)
      : SparseOpKernel(context), path_(GetWeightPath(context)) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& grad = context->input(0);
    const Tensor& kernel = context->input(1);
    if (!CheckMatrix(context, grad, "grad_output")) return;
    int64_t n_in;
    if (!GetRowCount(context, 5, "num_in_rows", &n_in)) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, n_in, grad.dim_size(0), &map)) return;
    if (!CheckConvKernel(context, kernel, map.num_offsets, grad, 2,
                         "grad_output"))
      return;
    const int64_t c_in = kernel.dim_size(1), c_out = kernel.dim_size(2);
    // The transposed map, sorted by input row, as the core needs.
    TempAllocator temp(context);
    KernelMapView transposed;
    SPARSE_OPS_RETURN_IF_CORE_ERROR(
        context, TransposedKernelMap(map, n_in, temp.callback(),
                                     IntraOpParallelFor(context), &transposed));

    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {n_in, c_in}, &output)) return;
    RunSparseConv<T>(context, grad, c_out, kernel, c_in,
                     /*transpose_weights=*/true, transposed, n_in, output,
                     path_);
  }

 private:
  const WeightPath path_;
};

template <typename T>
class ConvBackpropKernelOp : public SparseOpKernel {
 public:
  explicit ConvBackpropKernelOp(OpKernelConstruction* context)
      : SparseOpKernel(context) {}

  void ComputeChecked(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& grad = context->input(1);
    if (!CheckMatrix(context, features, "features")) return;
    if (!CheckMatrix(context, grad, "grad_output")) return;
    KernelMapView map;
    if (!GetKernelMap(context, 2, features.dim_size(0), grad.dim_size(0),
                      &map)) {
      return;
    }
    const int64_t c_in = features.dim_size(1), c_out = grad.dim_size(1);
    Tensor* output = nullptr;
    if (!AllocateOutput(context, 0, {map.num_offsets, c_in, c_out}, &output)) {
      return;
    }
    Tensor scratch;
    if (!AllocateTemp(context, tensorflow::DataTypeToEnum<T>::value,
                      {WeightGradientScratchSize(map, c_in, c_out)},
                      &scratch)) {
      return;
    }
    SparseConvWeightGradient<T>(
        features.flat<T>().data(), c_in, grad.flat<T>().data(), c_out, map,
        output->flat<T>().data(), scratch.flat<T>().data(),
        IntraOpParallelFor(context));
  }
};

#define SPARSE_OPS_REGISTER(T)                                          \
  REGISTER_KERNEL_BUILDER(                                              \
      Name("SparseOps>Conv").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
      ConvOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropInput")           \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<T>("T"),                  \
                          ConvBackpropInputOp<T>);                      \
  REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropKernel")          \
                              .Device(DEVICE_CPU)                       \
                              .TypeConstraint<T>("T"),                  \
                          ConvBackpropKernelOp<T>);
SPARSE_OPS_REGISTER(float)
SPARSE_OPS_REGISTER(double)
#undef SPARSE_OPS_REGISTER
// bfloat16 (Keras' mixed_bfloat16): the forward and input-gradient products;
// the weight gradient runs in float (the Python gradient widens its inputs).
REGISTER_KERNEL_BUILDER(Name("SparseOps>Conv")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<tensorflow::bfloat16>("T"),
                        ConvOp<tensorflow::bfloat16>);
REGISTER_KERNEL_BUILDER(Name("SparseOps>ConvBackpropInput")
                            .Device(DEVICE_CPU)
                            .TypeConstraint<tensorflow::bfloat16>("T"),
                        ConvBackpropInputOp<tensorflow::bfloat16>);

}  // namespace sparse_ops
