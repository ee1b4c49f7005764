// Op registrations: the permanent signatures of sparse_ops' custom ops.
// Names are namespaced "SparseOps>..." and must never be renamed (SavedModels
// refer to them). Kernels live in kernels/tf/, the algorithms in kernels/core/.
#include <string>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace sparse_ops {

using Status = absl::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// A coordinates input: int32 [N, 1 + D].
Status CoordinatesShape(InferenceContext* c, int input, ShapeHandle* shape) {
  return c->WithRank(c->input(input), 2, shape);
}

// Shape of a pooling op over a kernel map: features [rows, C], the map, a
// scalar row count (input 4) -> [row count, C] for every output.
Status MapPoolShape(InferenceContext* c) {
  ShapeHandle features, unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 0, &unused));
  DimensionHandle rows;
  TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(4, &rows));
  for (int i = 0; i < c->num_outputs(); ++i) {
    c->set_output(i, c->Matrix(rows, c->Dim(features, 1)));
  }
  return absl::OkStatus();
}

// Shape of a global pool: features [N, C], batch_index [N], num_batches.
Status GlobalPoolShape(InferenceContext* c) {
  ShapeHandle features, batch, unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &batch));
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(features, 0), c->Dim(batch, 0), &n));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
  DimensionHandle rows;
  TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &rows));
  for (int i = 0; i < c->num_outputs(); ++i) {
    c->set_output(i, c->Matrix(rows, c->Dim(features, 1)));
  }
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("SparseOps>KernelMap")
    .Input("in_coordinates: int32")
    .Input("out_coordinates: int32")
    .Input("offsets: int32")
    .Input("stride: int32")
    .Output("offset_splits: int64")
    .Output("in_rows: int32")
    .Output("out_rows: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle in, out, offsets, stride;
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 0, &in));
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 1, &out));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &offsets));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &stride));
      DimensionHandle splits;
      TF_RETURN_IF_ERROR(c->Add(c->Dim(offsets, 0), 1, &splits));
      c->set_output(0, c->Vector(splits));
      c->set_output(1, c->Vector(c->UnknownDim()));
      c->set_output(2, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Kernel map of a sparse convolution: for every kernel offset k, the pairs of
(input row, output row) with in_coordinates[in] == out_coordinates[out] +
offsets[k] * stride (batch equal). Pairs of offset k are
[offset_splits[k], offset_splits[k+1]), sorted by output row.

in_coordinates: int32 [N, 1 + D], unique rows, column 0 the batch index.
out_coordinates: int32 [M, 1 + D].
offsets: int32 [K, D] kernel offsets, in units of `stride`.
stride: int32 [D], the input tensor stride.
)doc");

REGISTER_OP("SparseOps>StridedCoordinates")
    .Input("coordinates: int32")
    .Input("stride: int32")
    .Output("out_coordinates: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle in, stride;
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 0, &in));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &stride));
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(in, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Output sites of a strided convolution: unique(floor(c / stride) * stride) per
spatial axis, batch kept, sorted batch-major and row-major.
)doc");

REGISTER_OP("SparseOps>GenerativeCoordinates")
    .Input("coordinates: int32")
    .Input("offsets: int32")
    .Input("stride: int32")
    .Output("out_coordinates: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle in, offsets, stride;
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 0, &in));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &offsets));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &stride));
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(in, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Every site a kernel reaches from the input sites: unique(c + offsets[k] *
stride) over sites and offsets, sorted batch-major and row-major.
)doc");

REGISTER_OP("SparseOps>Conv")
    .Input("features: T")
    .Input("kernel: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_out_rows: int64")
    .Output("output: T")
    .Attr("T: {float, double, bfloat16}")
    .Attr("weight_path: {'auto', 'dense', 'sparse'} = 'auto'")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features, kernel, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &kernel));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 0, &unused));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(kernel, 2)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Sparse convolution over a kernel map: output[o] = sum over the pairs (i, o)
of offset k of features[i] . kernel[k], for num_out_rows output rows.
kernel is [K, C_in, C_out]. Zero (pruned) weights are skipped; weight_path
picks how ('auto': whole zero offsets, zero channels and, below a measured
density, a sparse-weight product; 'dense': nothing skipped; 'sparse': the
sparse-weight product for every offset). All give the same values.
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>ConvBackpropInput")
    .Input("grad_output: T")
    .Input("kernel: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_in_rows: int64")
    .Output("grad_features: T")
    .Attr("T: {float, double, bfloat16}")
    .Attr("weight_path: {'auto', 'dense', 'sparse'} = 'auto'")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, kernel, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &kernel));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 0, &unused));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(kernel, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adjoint of SparseOps>Conv in its features: grad_features[i] = sum over the
pairs (i, o) of offset k of grad_output[o] . kernel[k]^T, for num_in_rows
rows. Also the forward pass of the transposed convolution. weight_path as
in SparseOps>Conv.
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>ConvBackpropKernel")
    .Input("features: T")
    .Input("grad_output: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Output("grad_kernel: T")
    .Attr("T: {float, double}")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features, grad, splits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &splits));
      DimensionHandle k;
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &k));
      c->set_output(0, c->MakeShape({k, c->Dim(features, 1), c->Dim(grad, 1)}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SparseOps>Conv in its kernel: grad_kernel[k] = sum over the pairs
(i, o) of offset k of features[i]^T grad_output[o], [K, C_in, C_out].
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>MaxPool")
    .Input("features: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_out_rows: int64")
    .Output("output: T")
    .Output("argmax: int32")
    .Attr("T: {float, double}")
    .Attr("validate_map: bool = true")
    .SetShapeFn(MapPoolShape)
    .Doc(R"doc(
Sparse max pooling over a kernel map: output[o, c] = max over the pairs
(i, o) of features[i, c], for num_out_rows output rows; argmax[o, c] = that
input row (ties: the first in offset order), or -1 (and output 0) for an
output row without pairs.
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>MaxPoolGrad")
    .Input("grad_output: T")
    .Input("argmax: int32")
    .Input("num_in_rows: int64")
    .Output("grad_features: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, argmax, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &argmax));
      TF_RETURN_IF_ERROR(c->Merge(grad, argmax, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(grad, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SparseOps>MaxPool in its features: grad_features[i, c] = sum of
grad_output[o, c] over the rows o with argmax[o, c] == i, for num_in_rows
rows. Entries of argmax must lie in [-1, num_in_rows).
)doc");

REGISTER_OP("SparseOps>Attention")
    .Input("features: T")
    .Input("coordinates: int32")
    .Input("k: int64")
    .Output("keep: bool")
    .Output("rows: int32")
    .Attr("T: {float, double}")
    .Attr("mode: {'value', 'abs'} = 'value'")
    .Attr("per: {'channel', 'site'} = 'channel'")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features, coordinates, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 1, &coordinates));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(
          c->Merge(c->Dim(features, 0), c->Dim(coordinates, 0), &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(features, 1)));
      c->set_output(1, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    })
    .Doc(R"doc(
k-selection attention (Hackel et al., Sec. 3.2). The rows are grouped into
batch items by coordinates[:, 0] (rows need not be sorted). per = "channel":
keep[i, c] is true when features[i, c] is among the k largest (mode "value")
or largest in magnitude (mode "abs") of channel c in its batch item. per =
"site": every entry of the k sites of largest L2 norm of each batch item is
kept. Ties go to the lower row; NaN ranks as -inf. rows: the rows with at
least one kept entry, ascending.

features: [N, C].
coordinates: int32 [N, 1 + D], column 0 the batch index (>= 0).
k: int64 scalar >= 0.
)doc");

REGISTER_OP("SparseOps>SumPool")
    .Input("features: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_out_rows: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("average: bool = false")
    .Attr("validate_map: bool = true")
    .SetShapeFn(MapPoolShape)
    .Doc(R"doc(
Sparse sum pooling over a kernel map: output[o] = sum over the pairs (i, o)
of features[i] (in offset order), divided by the number of pairs of o when
`average`; 0 for output rows without pairs.
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>SumPoolTranspose")
    .Input("features: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_in_rows: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("average: bool = false")
    .Attr("validate_map: bool = true")
    .SetShapeFn(MapPoolShape)
    .Doc(R"doc(
Adjoint of SparseOps>SumPool (unpooling): output[i] = sum over the pairs
(i, o) of features[o] (in offset order), each divided by the number of pairs
of o when `average`; features has one row per output row of the map. An
input row may occur at most once per offset.
validate_map: check the map's values against the row counts (the CPU
always does; on the GPU false skips the check and its host round trip, for
maps made by SparseOps>KernelMap; the GPU kernels stay in bounds on any map).
)doc");

REGISTER_OP("SparseOps>GlobalMaxPool")
    .Input("features: T")
    .Input("batch_index: int32")
    .Input("num_batches: int64")
    .Output("output: T")
    .Output("argmax: int32")
    .Attr("T: {float, double}")
    .SetShapeFn(GlobalPoolShape)
    .Doc(R"doc(
Global max pooling: output[b, c] = max of features[i, c] over the rows i with
batch_index[i] == b; argmax[b, c] = that row (ties: the lowest), or -1 (and
output 0) for an item without rows. Entries of batch_index must lie in
[0, num_batches). The gradient is SparseOps>MaxPoolGrad of argmax.
)doc");

REGISTER_OP("SparseOps>GlobalSumPool")
    .Input("features: T")
    .Input("batch_index: int32")
    .Input("num_batches: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("average: bool = false")
    .SetShapeFn(GlobalPoolShape)
    .Doc(R"doc(
Global sum pooling: output[b] = sum of features[i] over the rows i with
batch_index[i] == b (in increasing i), divided by their number when
`average`; 0 for an item without rows.
)doc");

REGISTER_OP("SparseOps>GlobalSumPoolGrad")
    .Input("grad_output: T")
    .Input("batch_index: int32")
    .Output("grad_features: T")
    .Attr("T: {float, double}")
    .Attr("average: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, batch;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &batch));
      c->set_output(0, c->Matrix(c->Dim(batch, 0), c->Dim(grad, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Adjoint of SparseOps>GlobalSumPool: grad_features[i] =
grad_output[batch_index[i]], divided by the rows of that item when
`average`. Entries of batch_index must lie in [0, rows of grad_output).
)doc");

REGISTER_OP("SparseOps>CoordinateLookup")
    .Input("coordinates: int32")
    .Input("queries: int32")
    .Output("rows: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle coordinates, queries;
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 0, &coordinates));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &queries));
      c->set_output(0, c->Vector(c->Dim(queries, 0)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Row of each query in a coordinate set: rows[q] = the row r with
coordinates[r] == queries[q], or -1 when there is none (queries may repeat,
lie outside the set's range or have a negative batch index).

coordinates: int32 [N, 1 + D], unique rows, column 0 the batch index.
queries: int32 [Q, 1 + D].
)doc");

REGISTER_OP("SparseOps>CoordinateUnion")
    .Input("coordinates: N * int32")
    .Output("union_coordinates: int32")
    .Output("rows: N * int32")
    .Attr("N: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle first;
      TF_RETURN_IF_ERROR(CoordinatesShape(c, 0, &first));
      for (int i = 0; i < c->num_inputs(); ++i) {
        ShapeHandle in;
        TF_RETURN_IF_ERROR(CoordinatesShape(c, i, &in));
        c->set_output(1 + i, c->Vector(c->Dim(in, 0)));
      }
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(first, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Union of coordinate sets. union_coordinates lists the rows of coordinates[0]
in order, then every site of coordinates[1], coordinates[2], ... not seen
before, in order of first appearance; rows[i][r] is the union row of
coordinates[i][r].

coordinates: N int32 [N_i, 1 + D], each with unique rows.
)doc");

REGISTER_OP("SparseOps>Voxelize")
    .Input("points: P")
    .Input("features: T")
    .Input("voxel_size: double")
    .Output("coordinates: int32")
    .Output("merged: T")
    .Output("inverse: int32")
    .Output("counts: int32")
    .Output("source: int32")
    .Attr("P: {float, double}")
    .Attr("T: {float, double}")
    .Attr("mode: {'average', 'sum', 'max', 'first'} = 'average'")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle points, features, voxel_size;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &points));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &features));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &voxel_size));
      DimensionHandle n;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(points, 0), c->Dim(features, 0), &n));
      std::string mode;
      TF_RETURN_IF_ERROR(c->GetAttr("mode", &mode));
      const DimensionHandle channels = c->Dim(features, 1);
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(points, 1)));
      c->set_output(1, c->Matrix(c->UnknownDim(), channels));
      c->set_output(2, c->Vector(n));
      c->set_output(3, c->Vector(c->UnknownDim()));
      c->set_output(4, mode == "max" || mode == "first"
                           ? c->Matrix(c->UnknownDim(), channels)
                           : c->Matrix(0, channels));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Voxelization of raw points: the sites (batch, floor(position / voxel_size))
of points [N, 1 + D] (column 0 the batch index, whole numbers >= 0), one
row per distinct site, sorted lexicographically (as np.unique(axis=0));
features [N, C] merged per site by mode ('average' and 'sum' accumulate in
double in input order; 'max' keeps the first point holding the maximum, NaN
propagating; 'first' the first point in input order).

coordinates: int32 [M, 1 + D].
merged: [M, C].
inverse: int32 [N], each point's row in coordinates.
counts: int32 [M], the points of each site.
source: int32 [M, C] for 'max' and 'first': the point each merged value
  came from (the gradient's target); [0, C] otherwise.
voxel_size: D sizes, finite and > 0.
)doc");

REGISTER_OP("SparseOps>DepthwiseConv")
    .Input("features: T")
    .Input("kernel: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_out_rows: int64")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features, kernel;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &kernel));
      DimensionHandle rows, width;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &rows));
      TF_RETURN_IF_ERROR(
          c->Multiply(c->Dim(kernel, 1), c->Dim(kernel, 2), &width));
      c->set_output(0, c->Matrix(rows, width));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Channel-wise sparse convolution over a kernel map: input channel c is
convolved with its own M filters, output[o, c * M + m] = sum over the pairs
(i, o) of offset k of features[i, c] * kernel[k, c, m], for num_out_rows
output rows. kernel is [K, C, M].
validate_map: as for SparseOps>Conv.
)doc");

REGISTER_OP("SparseOps>DepthwiseConvBackpropInput")
    .Input("grad_output: T")
    .Input("kernel: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("num_in_rows: int64")
    .Output("grad_features: T")
    .Attr("T: {float, double}")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grad, kernel;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &kernel));
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(kernel, 1)));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SparseOps>DepthwiseConv in its features: grad_features[i, c] =
sum over the pairs (i, o) of offset k and over m of
grad_output[o, c * M + m] * kernel[k, c, m], for num_in_rows rows.
validate_map: as for SparseOps>Conv.
)doc");

REGISTER_OP("SparseOps>DepthwiseConvBackpropKernel")
    .Input("features: T")
    .Input("grad_output: T")
    .Input("offset_splits: int64")
    .Input("in_rows: int32")
    .Input("out_rows: int32")
    .Input("multiplier: int64")
    .Output("grad_kernel: T")
    .Attr("T: {float, double}")
    .Attr("validate_map: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features, grad, splits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &features));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &grad));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &splits));
      DimensionHandle k, multiplier;
      TF_RETURN_IF_ERROR(c->Subtract(c->Dim(splits, 0), 1, &k));
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(5, &multiplier));
      c->set_output(0, c->MakeShape({k, c->Dim(features, 1), multiplier}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of SparseOps>DepthwiseConv in its kernel: grad_kernel[k, c, m] =
sum over the pairs (i, o) of offset k of features[i, c] *
grad_output[o, c * M + m], [K, C, multiplier].
validate_map: as for SparseOps>Conv.
)doc");

}  // namespace sparse_ops
