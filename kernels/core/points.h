// Coordinate set operations of the framework-free core that points and
// skip connections need: looking rows up in a coordinate set (interpolation
// at float points probes the 2^D lattice corners around each point), and
// the union of several coordinate sets.
#ifndef SPARSE_OPS_KERNELS_CORE_POINTS_H_
#define SPARSE_OPS_KERNELS_CORE_POINTS_H_

#include <cstdint>

#include "kernels/core/coordinates.h"
#include "kernels/core/parallel.h"
#include "kernels/core/status.h"

namespace sparse_ops {

// rows[q] = the row of the table's coordinate set equal to queries[q]
// ([num_queries, packer.dims()]), or -1. Queries outside the packer's range
// (any int32 values, negative batch included) are simply not found: the
// packer rejects them before they could wrap into another site's key.
void LookupRows(const CoordinateTable& table, const KeyPacker& packer,
                const int32_t* queries, int64_t num_queries, int32_t* rows,
                const ParallelFor& parallel_for);

// Union of coordinate sets inputs[i] ([sizes[i], dims], each with unique
// rows). Union rows are ordered by first appearance: the rows of inputs[0]
// in order, then each new site of inputs[1], inputs[2], ... in order.
// Writes rows[offset_i + r] = the union row of row r of input i (offset_i
// = sizes[0] + ... + sizes[i-1]) and first[u] = the position, in that same
// concatenated numbering, of union row u's first appearance; returns the
// number of union rows in *num_union. Fails on a site repeated within one
// input, or on ranges too wide for a 64-bit key.
Status UnionCoordinates(const int32_t* const* inputs, const int64_t* sizes,
                        int num_inputs, int dims, int32_t* rows, int64_t* first,
                        int64_t* num_union);

// The union's coordinates [num_union, dims]: union row u copies the row of
// its first appearance (first[u], as UnionCoordinates numbers it).
void UnionSites(const int32_t* const* inputs, const int64_t* sizes, int dims,
                const int64_t* first, int64_t num_union, int32_t* out);

}  // namespace sparse_ops

#endif  // SPARSE_OPS_KERNELS_CORE_POINTS_H_
