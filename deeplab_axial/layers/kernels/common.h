// What the kernels of this directory share: vector lanes, aligned buffers, gathers of
// one (sequence, head), and the thread pool.
#ifndef DEEPLAB_AXIAL_LAYERS_KERNELS_COMMON_H_
#define DEEPLAB_AXIAL_LAYERS_KERNELS_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"
#include "Eigen/Core"

namespace deeplab_axial {

using int64 = int64_t;

// Rows of queries (and, for the key-side gradients, of keys) are processed kLanes at a
// time as one vector (GCC/Clang vector extension): one register of the widest vector
// unit the kernels are built for (-march=native). Rows are zero-padded to a multiple of
// kLanes, so there is no scalar tail, and sums over depth or keys stay in a register:
// plain loops stored the partial sum after every depth channel (measured: stores were
// most of the time) and a scalar tail per loop doubled the time at 28 queries. A vector
// wider than the machine's registers is passed and returned through memory wherever a
// call is not inlined: 16 lanes on an AVX2 CPU made the kernels ~3x slower (measured).
#if defined(__AVX512F__)
constexpr int64 kLanes = 16;
#elif defined(__AVX__)
constexpr int64 kLanes = 8;
#else
constexpr int64 kLanes = 4;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
// Eigen's widest float packet for the same flags, whose shuffles (transposes, reductions)
// the kernels borrow where it holds exactly kLanes floats (every vector unit kLanes is
// chosen for; a scalar build falls back to plain loops).
using Packet = Eigen::internal::packet_traits<float>::type;
constexpr bool kPacketIsVec = Eigen::internal::unpacket_traits<Packet>::size == kLanes;

inline Vec LoadLanes(const float* x) {
  Vec v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}
inline void StoreLanes(float* x, Vec v) { std::memcpy(x, &v, sizeof(v)); }
inline void AddLanes(float* x, Vec v) { StoreLanes(x, LoadLanes(x) + v); }
inline Vec Zero() { return Vec{}; }

inline int64 PadToLanes(int64 size) { return (size + kLanes - 1) / kLanes * kLanes; }

// sum_{t < count} term(t) with four independent accumulators: one chain of vector
// multiply-adds waits ~4 cycles per term for the previous one, which bound every
// reduction of the kernels (perf: the adds after the FMAs held most of the samples).
// The order of the terms is fixed, so results stay deterministic.
template <typename Term>
inline Vec SumOf(int64 count, Term term) {
  Vec first = Zero(), second = Zero(), third = Zero(), fourth = Zero();
  int64 t = 0;
  for (; t + 4 <= count; t += 4) {
    first += term(t);
    second += term(t + 1);
    third += term(t + 2);
    fourth += term(t + 3);
  }
  for (; t < count; ++t) first += term(t);
  return (first + second) + (third + fourth);
}

// out[c] = sum_{t < count} term(t, c) for the C sums c < C at once, each in its own
// register: what the terms of one t share (a row of weights or gradients) is loaded once
// for all C instead of once per sum (SumOf, one sum at a time, loaded it C times and was
// bound by loads). C is a compile-time constant so that the sums stay in registers.
template <int C, typename Term>
inline void SumsOf(int64 count, Term term, Vec* out) {
  Vec sums[C] = {};
  for (int64 t = 0; t < count; ++t) {
    for (int c = 0; c < C; ++c) sums[c] += term(t, c);
  }
  for (int c = 0; c < C; ++c) out[c] = sums[c];
}

// The sum of a vector's lanes, by Eigen's shuffle-and-add reduction of the packet
// (kPacketIsVec; else halves added as vectors, then the lanes of the half). A loop over
// 16 lanes was most of the time of the content Grams at depth 32; the reduction tree took
// the Gram statistics at Axial-ResNet-S's depth-32 stage (224², batch 4) from 1.75 to
// 1.46 ms per call forward, 2.32 to 2.04 backward (measured).
inline float HorizontalSum(Vec v) {
  if constexpr (kPacketIsVec) {
    Packet packet;
    std::memcpy(&packet, &v, sizeof(packet));
    return Eigen::internal::predux(packet);
  } else {
    typedef float Half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
    Half low, high;
    std::memcpy(&low, &v, sizeof(low));
    std::memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof(low), sizeof(high));
    const Half halves = low + high;
    float sum = 0.0f;
    for (int64 lane = 0; lane < kLanes / 2; ++lane) sum += halves[lane];
    return sum;
  }
}

// Sum of a[t] * b[t] over t < count: kLanes products at a time in SumOf's four vector
// sums, then their lanes and a scalar tail. A scalar loop is one chain of dependent adds
// (the compiler keeps the order of float sums): the attention backward's scale
// gradients, three such loops, took a sixth of its time at 224² res2's shape, a quarter
// at res3's.
inline float Dot(const float* a, const float* b, int64 count) {
  const int64 vectors = count / kLanes;
  float sum = HorizontalSum(SumOf(vectors, [&](int64 v) {
    return LoadLanes(a + v * kLanes) * LoadLanes(b + v * kLanes);
  }));
  for (int64 t = vectors * kLanes; t < count; ++t) sum += a[t] * b[t];
  return sum;
}

// Sums held in registers at once by SumsOf's callers: half the vector registers (32 with
// AVX-512, 16 below), leaving room for the shared operands.
constexpr int kSumsInRegisters = kLanes == 16 ? 16 : 8;

// chunk(first, std::integral_constant<int, C>()) over [first, depth) in chunks of
// C = Width, then of Width / 2, ... 1 for the rest: loops of SumsOf over a runtime depth.
// The halving keeps a depth below Width (4 or 8 channels of a head) in one chunk rather
// than in single sums.
template <int Width, typename Chunk>
inline void ForChunks(int64 depth, Chunk chunk, int64 first = 0) {
  for (; first + Width <= depth; first += Width) {
    chunk(first, std::integral_constant<int, Width>());
  }
  if constexpr (Width > 1) ForChunks<Width / 2>(depth, chunk, first);
}

// Float buffers that start on a 64-byte boundary (whole aligned vectors).
using Buffer = std::vector<float, Eigen::aligned_allocator<float>>;

// x [blocks, queries, keys] -> [max(blocks, 1), keys, stride] (queries last, zero-padded
// to `stride`; all zero when there is no block): per-pair masks and biases in the layout
// of the per-(sequence, head) loops.
inline Buffer BlocksQueriesLast(const float* x, int64 blocks, int64 queries, int64 keys,
                                int64 stride) {
  Buffer out(std::max<int64>(blocks, 1) * keys * stride, 0.0f);
  for (int64 j = 0; j < blocks; ++j)
    for (int64 i = 0; i < queries; ++i)
      for (int64 w = 0; w < keys; ++w)
        out[(j * keys + w) * stride + i] = x[(j * queries + i) * keys + w];
  return out;
}

// Half-open index range [begin, end).
struct Range {
  int64 begin, end;
  int64 size() const { return end - begin; }
};

// Where a per-pair mask [blocks, queries, keys] leaves work: for block j, the keys of
// each group of kLanes queries (the hull of the keys its real queries keep; all keys
// when they keep none) and the queries of each group of kLanes keys (the hull of the
// query groups whose keys meet it). The kernels' loops run over these ranges instead of
// every (query, key) pair: a local span keeps about half the pairs of a 129-position axis
// at span 65 (Axial-ResNet-S's stride-4 stage at 513²) and 80 of every 96 keys of a
// blocked window. Pairs outside a range are ones the mask drops; pairs inside a range
// still carry their mask. Without a mask (blocks = 0) every range is whole.
class PairRanges {
 public:
  // kept(j, i, w): whether pair (i, w) of block j counts.
  template <typename Kept>
  PairRanges(int64 blocks, int64 queries, int64 keys, Kept kept)
      : query_groups_(PadToLanes(queries) / kLanes),
        key_groups_(PadToLanes(keys) / kLanes) {
    const int64 masks = std::max<int64>(blocks, 1);
    keys_of_.resize(masks * query_groups_);
    queries_of_.resize(masks * key_groups_);
    for (int64 j = 0; j < masks; ++j) {
      Range* keys_of = &keys_of_[j * query_groups_];
      for (int64 g = 0; g < query_groups_; ++g) {
        Range hull{keys, 0};
        for (int64 i = g * kLanes; i < std::min(queries, (g + 1) * kLanes); ++i) {
          for (int64 w = 0; w < keys; ++w) {
            if (blocks == 0 || kept(j, i, w)) {
              hull = {std::min(hull.begin, w), std::max(hull.end, w + 1)};
            }
          }
        }
        keys_of[g] = hull.size() > 0 ? hull : Range{0, keys};
      }
      for (int64 c = 0; c < key_groups_; ++c) {
        Range hull{queries, 0};
        for (int64 g = 0; g < query_groups_; ++g) {
          if (keys_of[g].begin < (c + 1) * kLanes && keys_of[g].end > c * kLanes) {
            hull = {std::min(hull.begin, g * kLanes),
                    std::max(hull.end, std::min(queries, (g + 1) * kLanes))};
          }
        }
        queries_of_[j * key_groups_ + c] = hull.size() > 0 ? hull : Range{0, 0};
      }
    }
  }

  // Keys [begin, end) of queries query_group * kLanes ... + kLanes in block j.
  Range KeysOf(int64 j, int64 query_group) const {
    return keys_of_[j * query_groups_ + query_group];
  }
  // Queries [begin, end) (real ones only) that see a key of key_group in block j.
  Range QueriesOf(int64 j, int64 key_group) const {
    return queries_of_[j * key_groups_ + key_group];
  }
  // Pairs inside the ranges of block j, for cost estimates.
  int64 Pairs(int64 j) const {
    int64 pairs = 0;
    for (int64 g = 0; g < query_groups_; ++g) pairs += KeysOf(j, g).size() * kLanes;
    return pairs;
  }

 private:
  int64 query_groups_, key_groups_;
  std::vector<Range> keys_of_, queries_of_;
};

// x[n, :, h, :] of x [N, P, H, D] -> out [D, stride] (positions last; the padding
// beyond P is left as it is, zero).
inline void GatherPositionsLast(const float* x, int64 n, int64 h, int64 positions,
                                int64 stride, int64 heads, int64 depth, float* out) {
  const float* base = x + (n * positions * heads + h) * depth;
  for (int64 p = 0; p < positions; ++p)
    for (int64 d = 0; d < depth; ++d) out[d * stride + p] = base[p * heads * depth + d];
}

inline void ScatterPositionsLast(const float* in, int64 n, int64 h, int64 positions,
                                 int64 stride, int64 heads, int64 depth, float* x) {
  float* base = x + (n * positions * heads + h) * depth;
  for (int64 p = 0; p < positions; ++p)
    for (int64 d = 0; d < depth; ++d) base[p * heads * depth + d] = in[d * stride + p];
}

// to[0 .. count) = from[0 .. count) for the short runs of one head's channels (4-64
// floats): four floats per fixed-size copy (one move each). A memcpy of a runtime size
// was a libc call per run, 7% of the attention forward at depth 4 and 8 (perf).
inline void CopyFloats(const float* from, int64 count, float* to) {
  constexpr int64 kQuad = 4;
  int64 d = 0;
  for (; d + kQuad <= count; d += kQuad) std::memcpy(to + d, from + d, kQuad * sizeof(float));
  for (; d < count; ++d) to[d] = from[d];
}

// x[n, :, h, :] of x [N, P, H, D] -> out [P, D] (depth last).
inline void GatherDepthLast(const float* x, int64 n, int64 h, int64 positions,
                            int64 heads, int64 depth, float* out) {
  const float* base = x + (n * positions * heads + h) * depth;
  for (int64 p = 0; p < positions; ++p) {
    CopyFloats(base + p * heads * depth, depth, out + p * depth);
  }
}

// The kLanes x kLanes tile at `in` (rows `in_stride` apart; rows from `rows` on read as
// zeros) -> its transpose at `out` (rows `out_stride` apart; only the first `out_rows`
// written), in registers (kPacketIsVec).
inline void TransposeTile(const float* in, int64 in_stride, int64 rows, float* out,
                          int64 out_stride, int64 out_rows = kLanes) {
  if constexpr (kPacketIsVec) {
    Eigen::internal::PacketBlock<Packet, kLanes> tile;
    for (int64 r = 0; r < kLanes; ++r) {
      tile.packet[r] = r < rows ? Eigen::internal::ploadu<Packet>(in + r * in_stride)
                                : Eigen::internal::pset1<Packet>(0.0f);
    }
    Eigen::internal::ptranspose(tile);
    for (int64 c = 0; c < out_rows; ++c) {
      Eigen::internal::pstoreu(out + c * out_stride, tile.packet[c]);
    }
  } else {
    for (int64 c = 0; c < out_rows; ++c)
      for (int64 r = 0; r < kLanes; ++r)
        out[c * out_stride + r] = r < rows ? in[r * in_stride + c] : 0.0f;
  }
}

// x[n] of x [N, P, C] -> out [C, stride] (positions last; the padding beyond P is
// written as zeros): every head's channels at once, in register tiles of kLanes
// positions x kLanes channels, then a scalar loop for the channels past the last whole
// tile. Per head (GatherPositionsLast), scalar, was about a tenth of the attention
// backward at 224² res2's shape.
inline void GatherSequence(const float* x, int64 n, int64 positions, int64 channels,
                           int64 stride, float* out) {
  const float* base = x + n * positions * channels;
  int64 c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
    for (int64 p = 0; p < positions; p += kLanes) {
      TransposeTile(base + p * channels + c, channels, std::min(kLanes, positions - p),
                    out + c * stride + p, stride);
    }
  }
  for (; c < channels; ++c) {
    for (int64 p = 0; p < stride; ++p) {
      out[c * stride + p] = p < positions ? base[p * channels + c] : 0.0f;
    }
  }
}

// GatherSequence's inverse: in [C, stride] -> x[n] [P, C].
inline void ScatterSequence(const float* in, int64 n, int64 positions, int64 channels,
                            int64 stride, float* x) {
  float* base = x + n * positions * channels;
  int64 c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
    for (int64 p = 0; p < positions; p += kLanes) {
      TransposeTile(in + c * stride + p, stride, kLanes, base + p * channels + c, channels,
                    std::min(kLanes, positions - p));
    }
  }
  for (; c < channels; ++c) {
    for (int64 p = 0; p < positions; ++p) base[p * channels + c] = in[c * stride + p];
  }
}

// in [rows, stride] (keys, queries padded to kLanes) -> out [stride, out_stride]
// (queries, keys padded to kLanes), for the tiles the key-side sums of block j read:
// each key group's queries in `ranges`. The key sides of the backward kernels put keys
// on the lanes this way; a scalar transpose of every pair was a quarter of the attention
// backward at Axial-ResNet-S's 513² stride-4 stage (span 65, measured). Columns of out
// past `rows` get zeros.
inline void TransposeKeyGroups(const float* in, int64 rows, int64 stride,
                               const PairRanges& ranges, int64 j, int64 out_stride,
                               float* out) {
  for (int64 w = 0; w < rows; w += kLanes) {
    const Range queries = ranges.QueriesOf(j, w / kLanes);
    for (int64 i = queries.begin / kLanes * kLanes; i < queries.end; i += kLanes) {
      TransposeTile(in + w * stride + i, stride, std::min(kLanes, rows - w),
                    out + i * out_stride + w, out_stride);
    }
  }
}

// Runs fn(begin, end) over [0, total) on the op's thread pool, which sizes the ranges
// from the cost (cycles per unit, roughly).
template <typename Fn>
void ParallelFor(::tensorflow::OpKernelContext* context, int64 total,
                 int64 cost_per_unit, Fn fn) {
  context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
      total, cost_per_unit, fn);
}

// Two parts per thread of the op's pool: enough to balance the load, few enough that
// per-part accumulators stay small.
inline int64 NumParts(::tensorflow::OpKernelContext* context, int64 total) {
  return std::max<int64>(
      1, std::min<int64>(
             total, 2 * context->device()->tensorflow_cpu_worker_threads()->num_threads));
}

// Runs fn(part, first, last) over `parts` fixed contiguous ranges of [0, total) in
// parallel. The ranges do not depend on scheduling, so sums per part, added in part
// order, give the same float result on every run.
template <typename Fn>
void ParallelParts(::tensorflow::OpKernelContext* context, int64 total, int64 parts,
                   Fn fn) {
  const int64 size = (total + parts - 1) / parts;
  ParallelFor(context, parts, /*cost_per_unit=*/int64{1} << 30,
              [&](int64 begin, int64 end) {
                for (int64 part = begin; part < end; ++part) {
                  fn(part, part * size, std::min(total, (part + 1) * size));
                }
              });
}

}  // namespace deeplab_axial

#endif  // DEEPLAB_AXIAL_LAYERS_KERNELS_COMMON_H_
