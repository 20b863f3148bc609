// Fused position-sensitive axial attention for the CPU (forward and backward).
//
// One kernel computes, for every sequence n, head h and query i,
//   logits[w] = sc[h] q[n,i,h] . k[n,w,h] + sq[h] q[n,i,h] . rq[i,w]
//               + sk[h] k[n,w,h] . rk[i,w] + bias[n % B, i, w]
//   p = softmax_w(logits)
//   content[n,i,h]  = sum_w p[w] v[n,w,h]
//   position[n,i,h] = sum_w p[w] rv[i,w]
// with every logit, weight and product kept in cache: the TF-op path writes and reads
// tensors of the [sequences, heads, queries, keys] logits' size dozens of times per
// training step (matmul outputs, transposes, the sum, softmax and their gradients),
// which is most of an axial layer's time on a CPU. The forward keeps only the
// log-normalizer per (n, h, i); the backward recomputes the weights from it (the logits
// cost a few multiply-adds each).
//
// (sc, sq, sk) = scales[0..2] are the similarity batch norm's per-(term, head) scales
// (its per-head offset shifts every logit of a row alike, which the softmax ignores), and
// bias holds 0 or a large negative logit per (block, query, key) for the masked pairs of
// a local span, block = n % B (B = 0: no bias). Scaling and masking inside the kernel
// keeps the scaled copies of q and k, and their gradients, out of the step's memory.
// The loops skip the pairs a bias masks (`PairRanges`, common.h): the weight of such a
// pair is exp(-1e9 - max) = 0 beside any unmasked key, so skipping them changes no
// result beyond the order of float sums.
//
// Layouts (float32, row-major): q [N, I, H, Dq], k [N, W, H, Dq], rq [I, W, Dq],
// rk [I, W, Dq], v [N, W, H, Dv], rv [I, W, Dv], scales [3, H], bias [B, I, W].

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "Eigen/Core"
#include "common.h"

namespace deeplab_axial {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

enum Operand { kQuery, kKey, kQueryTable, kKeyTable, kValue, kValueTable, kScales, kBias };
constexpr int kNumOperands = 8;

struct Sizes {
  int64 n, i, w, h, dq, dv;
  int64 blocks;  // B of the bias, 0 without one
  int64 ip;      // i padded to a multiple of kLanes
  int64 wp;      // w padded to a multiple of kLanes
};

// Reads the operand shapes and checks that they agree.
bool ReadSizes(OpKernelContext* context, Sizes* s) {
  const Tensor& q = context->input(kQuery);
  const Tensor& k = context->input(kKey);
  const Tensor& rq = context->input(kQueryTable);
  const Tensor& rk = context->input(kKeyTable);
  const Tensor& v = context->input(kValue);
  const Tensor& rv = context->input(kValueTable);
  const Tensor& scales = context->input(kScales);
  const Tensor& bias = context->input(kBias);
  const bool ranks = q.dims() == 4 && k.dims() == 4 && v.dims() == 4 && rq.dims() == 3 &&
                     rk.dims() == 3 && rv.dims() == 3 && scales.dims() == 2 &&
                     bias.dims() == 3;
  const auto disagree = [&]() {
    context->CtxFailure(InvalidArgument(
        "axial attention: operand shapes disagree (expected q [N, I, H, Dq], k [N, W, H, "
        "Dq], rq/rk [I, W, Dq], v [N, W, H, Dv], rv [I, W, Dv], scales [3, H], bias [B, "
        "I, W] with B = 0 or N % B = 0): q ", q.shape().DebugString(), " k ",
        k.shape().DebugString(), " rq ", rq.shape().DebugString(), " rk ",
        rk.shape().DebugString(), " v ", v.shape().DebugString(), " rv ",
        rv.shape().DebugString(), " scales ", scales.shape().DebugString(), " bias ",
        bias.shape().DebugString()));
    return false;
  };
  if (!ranks) return disagree();
  *s = {q.dim_size(0), q.dim_size(1), k.dim_size(1), q.dim_size(2), q.dim_size(3),
        v.dim_size(3), bias.dim_size(0), PadToLanes(q.dim_size(1)),
        PadToLanes(k.dim_size(1))};
  const bool agree =
      k.dim_size(0) == s->n && k.dim_size(2) == s->h && k.dim_size(3) == s->dq &&
      v.dim_size(0) == s->n && v.dim_size(1) == s->w && v.dim_size(2) == s->h &&
      rq.dim_size(0) == s->i && rq.dim_size(1) == s->w && rq.dim_size(2) == s->dq &&
      rk.dim_size(0) == s->i && rk.dim_size(1) == s->w && rk.dim_size(2) == s->dq &&
      rv.dim_size(0) == s->i && rv.dim_size(1) == s->w && rv.dim_size(2) == s->dv &&
      scales.dim_size(0) == 3 && scales.dim_size(1) == s->h &&
      (s->blocks == 0 || (s->n % s->blocks == 0 && bias.dim_size(1) == s->i &&
                          bias.dim_size(2) == s->w));
  return agree || disagree();
}

// Every per-(sequence, head) loop below runs over the queries i innermost, on rows of
// `ip` floats: a query's logits, softmax and retrievals are then element-wise
// operations on vectors of queries, with no horizontal sum per query (a loop of short
// dot products over keys measured ~3x slower). The key-side gradients, sums over
// queries, run with keys on the lanes on transposed weights.

typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

// exp of every lane of x <= 88 (logits minus their row's maximum or log-normalizer):
// Cephes' range reduction and polynomial, as in Eigen's vectorized exp, without Eigen's
// test of every packet for lanes outside its fast range (a mask reduced across lanes to
// a general register, and a branch: about half of the exponentials' time, perf). Lanes
// below -87 (exp < 1.7e-38: masked pairs, at -1e9) give 0, so no result is subnormal.
// The same lanes give the same result wherever a row is in memory: deterministic (Eigen's
// exp, on a row not aligned to its packets, took its scalar path for the first entries,
// which rounded differently).
inline Vec Exp(Vec x) {
  const Vec zero = Zero(), lowest = zero - 87.0f, highest = zero + 88.0f;
  const Vec bounded = x < lowest ? lowest : (x > highest ? highest : x);
  // n = round(x / ln 2): adding and subtracting 1.5 * 2^23 leaves the nearest integer.
  const Vec round = zero + 12582912.0f;
  const Vec n = (bounded * 1.44269504088896341f + round) - round;
  // f = x - n ln 2 in [-ln2/2, ln2/2], ln 2 split in two parts for precision.
  const Vec f = (bounded - n * 0.693359375f) - n * -2.12194440e-4f;
  Vec y = zero + 1.9875691500e-4f;
  y = y * f + 1.3981999507e-3f;
  y = y * f + 8.3334519073e-3f;
  y = y * f + 4.1665795894e-2f;
  y = y * f + 1.6666665459e-1f;
  y = y * f + 5.0000001201e-1f;
  y = y * (f * f) + f + 1.0f;
  // 2^n from the exponent bits (n in [-126, 127]).
  const IntVec exponent = (__builtin_convertvector(n, IntVec) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return x < lowest ? zero : y * scale;
}

// The relative-position tables (and their gradients) are kept per group of kLanes
// queries, [ip / kLanes, W, D, kLanes]: the rows one query group reads for its keys are
// then contiguous. In [W, D, ip] order they were ip floats apart, a multiple of 256
// bytes at 56 or 64 queries, which maps them onto a quarter of the L1 cache's sets:
// the tables were re-read from L2 for every head (~3/4 of the forward's time at 224²
// res2's shape).
// The index of (query i, key w, depth d) in such a table of `depth` channels (for a
// query group's first query, where its row of kLanes queries starts).
inline int64 GroupedIndex(const Sizes& s, int64 depth, int64 w, int64 d, int64 i) {
  return ((i / kLanes * s.w + w) * depth + d) * kLanes + i % kLanes;
}

// table [I, W, D] -> [ip / kLanes, W, D, kLanes] (zero-padded queries).
Buffer QueryGroups(const float* table, const Sizes& s, int64 depth) {
  Buffer out(s.ip * s.w * depth, 0.0f);
  for (int64 i = 0; i < s.i; ++i)
    for (int64 w = 0; w < s.w; ++w)
      for (int64 d = 0; d < depth; ++d)
        out[GroupedIndex(s, depth, w, d, i)] = table[(i * s.w + w) * depth + d];
  return out;
}

// A bias at or below this masks its pair (the layers pass -1e9): the pair's logit
// minus the row's maximum then underflows exp to 0 whenever the row has an unmasked key,
// as attention logits are far smaller than this in magnitude.
constexpr float kMaskedBias = -1e6f;

// What every (sequence, head) shares: the tables (grouped), the bias and the ranges of
// the pairs it leaves.
struct Tables {
  Buffer rq, rk, rv, bias;
  PairRanges ranges;
  Tables(OpKernelContext* context, const Sizes& s)
      : rq(QueryGroups(context->input(kQueryTable).flat<float>().data(), s, s.dq)),
        rk(QueryGroups(context->input(kKeyTable).flat<float>().data(), s, s.dq)),
        rv(QueryGroups(context->input(kValueTable).flat<float>().data(), s, s.dv)),
        // The padded queries get no bias: their logits must stay finite (they are
        // exponentiated, then multiplied by zero).
        bias(BlocksQueriesLast(context->input(kBias).flat<float>().data(), s.blocks, s.i,
                               s.w, s.ip)),
        ranges(s.blocks, s.i, s.w,
               [bias = context->input(kBias).flat<float>().data(), &s](
                   int64 j, int64 i, int64 w) {
                 return bias[(j * s.i + i) * s.w + w] > kMaskedBias;
               }) {}

  // The bias block (index into `bias` and `ranges`) of sequence n.
  static int64 BlockOf(const Sizes& s, int64 n) { return s.blocks == 0 ? 0 : n % s.blocks; }
  // The bias rows [W, ip] of block j.
  const float* BiasOf(const Sizes& s, int64 j) const { return bias.data() + j * s.w * s.ip; }
};

// table [I, W, D] -> [I, D, wp] (keys last, zero-padded).
Buffer KeysLast(const float* table, const Sizes& s, int64 depth) {
  Buffer out(s.i * depth * s.wp, 0.0f);
  for (int64 i = 0; i < s.i; ++i)
    for (int64 w = 0; w < s.w; ++w)
      for (int64 d = 0; d < depth; ++d)
        out[(i * depth + d) * s.wp + w] = table[(i * s.w + w) * depth + d];
  return out;
}

// The operands of one (sequence, head) and its logits [W, I].
struct Head {
  const Sizes& s;
  float content_scale = 0.0f, query_scale = 0.0f, key_scale = 0.0f;
  Buffer q, qc, qp;  // [Dq, I]: q, and q times the content and query-position scales
  Buffer k, kp, v;   // [W, D]: k, k times the key-position scale, v
  Buffer logits;     // [W, I]
  explicit Head(const Sizes& sizes)
      : s(sizes), q(s.dq * s.ip), qc(s.dq * s.ip), qp(s.dq * s.ip), k(s.w * s.dq),
        kp(s.w * s.dq), v(s.w * s.dv), logits(s.w * s.ip) {}

  // Head h of sequence n, its q from `q_rows` [Dq, I] (GatherSequence's rows of head h).
  void Gather(OpKernelContext* context, int64 n, int64 h, const float* q_rows) {
    const float* scales = context->input(kScales).flat<float>().data();
    content_scale = scales[h];
    query_scale = scales[s.h + h];
    key_scale = scales[2 * s.h + h];
    std::copy(q_rows, q_rows + s.dq * s.ip, q.begin());
    for (int64 index = 0; index < s.dq * s.ip; ++index) {
      qc[index] = content_scale * q[index];
      qp[index] = query_scale * q[index];
    }
    GatherDepthLast(context->input(kKey).flat<float>().data(), n, h, s.w, s.h, s.dq,
                    k.data());
    for (int64 index = 0; index < s.w * s.dq; ++index) kp[index] = key_scale * k[index];
    GatherDepthLast(context->input(kValue).flat<float>().data(), n, h, s.w, s.h, s.dv,
                    v.data());
  }

  // logits[w, i] = qc[:, i] . k[w] + qp[:, i] . rq[w, :, i] + kp[w] . rk[w, :, i]
  // + bias[w, i], for the keys w of each query group in block j (others: not written).
  void ComputeLogits(const Tables& tables, int64 j) {
    const int64 I = s.ip;
    const float* bias = tables.BiasOf(s, j);
    for (int64 i = 0; i < I; i += kLanes) {
      const Range keys = tables.ranges.KeysOf(j, i / kLanes);
      // The logits of `width` keys from keys.begin + t on, at once.
      ForChunks<kSumsInRegisters / 2>(keys.size(), [&](int64 t, auto width) {
        constexpr int C = decltype(width)::value;
        const int64 w = keys.begin + t;
        const float* rq = tables.rq.data() + GroupedIndex(s, s.dq, w, 0, i);
        const float* rk = tables.rk.data() + GroupedIndex(s, s.dq, w, 0, i);
        Vec sums[C];
        SumsOf<C>(s.dq, [&](int64 d, int c) {
          const int64 at = (w + c) * s.dq + d;  // of key w + c, depth d
          return k[at] * LoadLanes(&qc[d * I + i]) +
                 LoadLanes(&qp[d * I + i]) * LoadLanes(rq + (c * s.dq + d) * kLanes) +
                 kp[at] * LoadLanes(rk + (c * s.dq + d) * kLanes);
        }, sums);
        for (int c = 0; c < C; ++c) {
          StoreLanes(&logits[(w + c) * I + i], sums[c] + LoadLanes(bias + (w + c) * I + i));
        }
      });
    }
  }

  // logits[w, i] <- exp(logits[w, i] - shift[i]) over the ranges of block j; shift has
  // s.ip entries.
  void Exponentiate(const Tables& tables, int64 j, const float* shift) {
    const int64 I = s.ip;
    float* rows = logits.data();
    for (int64 i = 0; i < I; i += kLanes) {
      const Vec shift_lanes = LoadLanes(shift + i);
      const Range keys = tables.ranges.KeysOf(j, i / kLanes);
      for (int64 w = keys.begin; w < keys.end; ++w) {
        StoreLanes(rows + w * I + i, Exp(LoadLanes(rows + w * I + i) - shift_lanes));
      }
    }
  }
};

// sums[c] = sum_t row_t x[t * depth + c] and sums[C + c] = sum_t row_t table_t[c] over
// `count` keys t, for C channels at once: `rows` (`row_stride` apart, queries on the
// lanes) are a head's weights or logit gradients, x its depth-last v or k rows and
// `table` the grouped rv or rq rows (GroupedIndex) of the same keys and channels. What
// the forward's retrievals and the backward's query side both sum.
template <int C>
inline void RowsTimesHeadAndTable(int64 count, const float* rows, int64 row_stride,
                                  const float* x, const float* table, int64 depth,
                                  Vec* sums) {
  SumsOf<2 * C>(count, [&](int64 t, int c) {
    const Vec row = LoadLanes(rows + t * row_stride);
    return c < C ? x[t * depth + c] * row
                 : row * LoadLanes(table + (t * depth + c - C) * kLanes);
  }, sums);
}

// Cycles (roughly) of one (sequence, head): per logit, the contractions and an exp.
int64 HeadCost(const Sizes& s) {
  return s.ip * s.w * (3 * s.dq + 2 * s.dv + 21) / kLanes * 4;
}

class ForwardOp : public OpKernel {
 public:
  explicit ForwardOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    Sizes s;
    if (!ReadSizes(context, &s)) return;
    Tensor *content, *position, *log_normalizer;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({s.n, s.i, s.h, s.dv}),
                                                     &content));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({s.n, s.i, s.h, s.dv}),
                                                     &position));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({s.n, s.h, s.i}),
                                                     &log_normalizer));
    float* content_out = content->flat<float>().data();
    float* position_out = position->flat<float>().data();
    float* normalizer_out = log_normalizer->flat<float>().data();
    if (s.n * s.i * s.h == 0) return;
    if (s.w == 0) {  // no key: empty sums
      std::fill(content_out, content_out + content->NumElements(), 0.0f);
      std::fill(position_out, position_out + position->NumElements(), 0.0f);
      std::fill(normalizer_out, normalizer_out + log_normalizer->NumElements(), -INFINITY);
      return;
    }
    const Tables tables(context, s);
    const int64 I = s.ip;
    const float* query = context->input(kQuery).flat<float>().data();
    ParallelFor(context, s.n, HeadCost(s) * s.h, [&](int64 first, int64 last) {
      Head head(s);
      // Every head of a sequence: q in, the two retrievals out [H * Dv, I].
      Buffer maximum(I), total(I), queries(s.h * s.dq * I), contents(s.h * s.dv * I),
          positions(s.h * s.dv * I);
      for (int64 n = first; n < last; ++n) {
        const int64 j = Tables::BlockOf(s, n);
        GatherSequence(query, n, s.i, s.h * s.dq, I, queries.data());
        for (int64 h = 0; h < s.h; ++h) {
          const int64 nh = n * s.h + h;
          head.Gather(context, n, h, queries.data() + h * s.dq * I);
          float* content_rows = contents.data() + h * s.dv * I;
          float* position_rows = positions.data() + h * s.dv * I;
          head.ComputeLogits(tables, j);
          const float* logits = head.logits.data();
          for (int64 i = 0; i < I; i += kLanes) {
            const Range keys = tables.ranges.KeysOf(j, i / kLanes);
            Vec largest = LoadLanes(logits + keys.begin * I + i);
            for (int64 w = keys.begin + 1; w < keys.end; ++w) {
              const Vec row = LoadLanes(logits + w * I + i);
              largest = row > largest ? row : largest;
            }
            StoreLanes(&maximum[i], largest);
          }
          head.Exponentiate(tables, j, maximum.data());
          const float* p = head.logits.data();
          for (int64 i = 0; i < I; i += kLanes) {
            const Range keys = tables.ranges.KeysOf(j, i / kLanes);
            const float* p_keys = p + keys.begin * I + i;  // row t: key keys.begin + t
            const Vec sum =
                SumOf(keys.size(), [&](int64 t) { return LoadLanes(p_keys + t * I); });
            StoreLanes(&total[i], sum);
            const Vec inverse = 1.0f / sum;
            // Content and position sums of `width` value channels from d on, at once.
            ForChunks<kSumsInRegisters / 2>(s.dv, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;
              Vec sums[2 * C];  // content, then position
              RowsTimesHeadAndTable<C>(
                  keys.size(), p_keys, I, head.v.data() + keys.begin * s.dv + d,
                  tables.rv.data() + GroupedIndex(s, s.dv, keys.begin, d, i), s.dv, sums);
              for (int c = 0; c < C; ++c) {
                StoreLanes(content_rows + (d + c) * I + i, sums[c] * inverse);
                StoreLanes(position_rows + (d + c) * I + i, sums[C + c] * inverse);
              }
            });
          }
          for (int64 i = 0; i < s.i; ++i) {
            normalizer_out[nh * s.i + i] = maximum[i] + std::log(total[i]);
          }
        }
        ScatterSequence(contents.data(), n, s.i, s.h * s.dv, I, content_out);
        ScatterSequence(positions.data(), n, s.i, s.h * s.dv, I, position_out);
      }
    });
  }
};

constexpr int kNumGradients = 7;  // of the operands before the bias

class BackwardOp : public OpKernel {
 public:
  explicit BackwardOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    Sizes s;
    if (!ReadSizes(context, &s)) return;
    Tensor* grads[kNumGradients];
    for (int index = 0; index < kNumGradients; ++index) {
      OP_REQUIRES_OK(context, context->allocate_output(index, context->input(index).shape(),
                                                       &grads[index]));
    }
    if (s.n * s.i * s.h * s.w == 0) {  // no (query, key) pair: every gradient is zero
      for (Tensor* grad : grads) {
        auto flat = grad->flat<float>();
        std::fill(flat.data(), flat.data() + flat.size(), 0.0f);
      }
      return;
    }
    // Otherwise every element of every gradient is written below (per sequence and head,
    // and the tables and scales at the end), so the outputs are not zero-filled first.
    const Tables tables(context, s);
    const Buffer rk_keys_last =
        KeysLast(context->input(kKeyTable).flat<float>().data(), s, s.dq);
    const float* log_normalizer = context->input(kNumOperands).flat<float>().data();
    const float* query = context->input(kQuery).flat<float>().data();
    const float* d_content = context->input(kNumOperands + 1).flat<float>().data();
    const float* d_position = context->input(kNumOperands + 2).flat<float>().data();
    float* d_q_out = grads[kQuery]->flat<float>().data();
    float* d_k_out = grads[kKey]->flat<float>().data();
    float* d_v_out = grads[kValue]->flat<float>().data();
    const int64 I = s.ip, W = s.w;
    // The table and scale gradients sum over every (n, h): one accumulator per part of
    // the sequences, added in part order.
    const int64 parts = NumParts(context, s.n);
    const int64 table_size = W * (2 * s.dq + s.dv) * I;
    const int64 part_size = table_size + 3 * s.h;
    Buffer accumulators(parts * part_size, 0.0f);
    ParallelParts(context, s.n, parts, [&](int64 part, int64 first, int64 last) {
      // The tables' gradients, grouped like the tables.
      float* d_rq = accumulators.data() + part * part_size;
      float* d_rk = d_rq + W * s.dq * I;
      float* d_rv = d_rk + W * s.dq * I;
      float* d_scales = d_rv + W * s.dv * I;                  // [3, H]
      // Every head of a sequence is kept until the table gradients, which sum over the
      // heads in registers: one read-modify-write of the accumulators per sequence
      // instead of per head (those were a third of this kernel's time).
      std::vector<Head> heads(s.h, Head(s));
      Buffer d_logits(s.h * W * I), normalizer(I, 0.0f);
      // Every head of a sequence (GatherSequence, ScatterSequence): q, d_content and
      // d_position in [H * D, I]; the gradients of q [H * Dq, I], k [H * Dq, wp] and
      // v [H * Dv, wp] out.
      Buffer queries(s.h * s.dq * I), d_contents(s.h * s.dv * I), d_positions(s.h * s.dv * I);
      Buffer d_queries(s.h * s.dq * I), d_keys(s.h * s.dq * s.wp), d_values(s.h * s.dv * s.wp);
      // Gradients of qc and qp [Dq, I]; of kp [Dq, wp].
      Buffer d_qc(s.dq * I), d_qp(s.dq * I), d_kp(s.dq * s.wp);
      Buffer weights_t(I * s.wp, 0.0f), d_logits_t(I * s.wp, 0.0f);
      for (int64 n = first; n < last; ++n) {
        const int64 j = Tables::BlockOf(s, n);
        GatherSequence(query, n, s.i, s.h * s.dq, I, queries.data());
        GatherSequence(d_content, n, s.i, s.h * s.dv, I, d_contents.data());
        GatherSequence(d_position, n, s.i, s.h * s.dv, I, d_positions.data());
        for (int64 h = 0; h < s.h; ++h) {
          Head& head = heads[h];
          head.Gather(context, n, h, queries.data() + h * s.dq * I);
          head.ComputeLogits(tables, j);
          std::copy(log_normalizer + (n * s.h + h) * s.i,
                    log_normalizer + (n * s.h + h + 1) * s.i, normalizer.begin());
          head.Exponentiate(tables, j, normalizer.data());
          const float* p_all = head.logits.data();  // the weights p[w, i]
          float* d_l_all = d_logits.data() + h * W * I;
          const float* d_c = d_contents.data() + h * s.dv * I;   // d_content [Dv, I]
          const float* d_pos = d_positions.data() + h * s.dv * I;  // d_position [Dv, I]
          float* d_q = d_queries.data() + h * s.dq * I;
          float* d_k = d_keys.data() + h * s.dq * s.wp;
          float* d_value = d_values.data() + h * s.dv * s.wp;
          for (int64 i = 0; i < I; i += kLanes) {
            const Range keys = tables.ranges.KeysOf(j, i / kLanes);
            // The skipped pairs' weights and logit gradients are zero: written as such
            // for the key-side and table sums below, which read whole rows.
            const auto skipped = [&](int64 w) {
              StoreLanes(&head.logits[w * I + i], Zero());
              StoreLanes(d_l_all + w * I + i, Zero());
            };
            for (int64 w = 0; w < keys.begin; ++w) skipped(w);
            for (int64 w = keys.end; w < W; ++w) skipped(w);
            // d_p[w, i] = d_content[:, i] . v[w] + d_position[:, i] . rv[w, :, i], then
            // the softmax backward d_logits = p * (d_p - sum_w p d_p).
            Vec expected = Zero();
            ForChunks<kSumsInRegisters / 2>(keys.size(), [&](int64 t, auto width) {
              constexpr int C = decltype(width)::value;
              const int64 w = keys.begin + t;  // d_p of keys w ... w + C - 1
              const float* rv = tables.rv.data() + GroupedIndex(s, s.dv, w, 0, i);
              Vec d_p[C];
              SumsOf<C>(s.dv, [&](int64 d, int c) {
                return head.v[(w + c) * s.dv + d] * LoadLanes(d_c + d * I + i) +
                       LoadLanes(d_pos + d * I + i) * LoadLanes(rv + (c * s.dv + d) * kLanes);
              }, d_p);
              for (int c = 0; c < C; ++c) {
                expected += LoadLanes(p_all + (w + c) * I + i) * d_p[c];
                StoreLanes(d_l_all + (w + c) * I + i, d_p[c]);
              }
            });
            for (int64 w = keys.begin; w < keys.end; ++w) {
              StoreLanes(d_l_all + w * I + i, LoadLanes(p_all + w * I + i) *
                                                  (LoadLanes(d_l_all + w * I + i) - expected));
            }
            // Query side, element-wise over queries.
            const float* d_l_keys = d_l_all + keys.begin * I + i;  // row t: key begin + t
            ForChunks<kSumsInRegisters / 2>(s.dq, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;  // depths d ... d + C - 1
              Vec sums[2 * C];  // content, then query-position
              RowsTimesHeadAndTable<C>(
                  keys.size(), d_l_keys, I, head.k.data() + keys.begin * s.dq + d,
                  tables.rq.data() + GroupedIndex(s, s.dq, keys.begin, d, i), s.dq, sums);
              for (int c = 0; c < C; ++c) {
                StoreLanes(&d_qc[(d + c) * I + i], sums[c]);
                StoreLanes(&d_qp[(d + c) * I + i], sums[C + c]);
                StoreLanes(&d_q[(d + c) * I + i],
                           head.content_scale * sums[c] + head.query_scale * sums[C + c]);
              }
            });
          }
          // Key side: sums over queries, with keys on the lanes (transposed weights).
          TransposeKeyGroups(p_all, W, I, tables.ranges, j, s.wp, weights_t.data());
          TransposeKeyGroups(d_l_all, W, I, tables.ranges, j, s.wp, d_logits_t.data());
          for (int64 w = 0; w < s.wp; w += kLanes) {
            const Range queries = tables.ranges.QueriesOf(j, w / kLanes);
            const float* d_l_t = d_logits_t.data() + queries.begin * s.wp + w;
            const float* p_t = weights_t.data() + queries.begin * s.wp + w;
            ForChunks<kSumsInRegisters / 2>(s.dq, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;  // depths d ... d + C - 1
              const float* qc = head.qc.data() + d * I + queries.begin;
              const float* rk = rk_keys_last.data() + (queries.begin * s.dq + d) * s.wp + w;
              Vec sums[2 * C];  // content, then key-position
              SumsOf<2 * C>(queries.size(), [&](int64 t, int c) {
                const Vec d_l = LoadLanes(d_l_t + t * s.wp);
                return c < C ? qc[c * I + t] * d_l
                             : LoadLanes(rk + (t * s.dq + c - C) * s.wp) * d_l;
              }, sums);
              for (int c = 0; c < C; ++c) {
                StoreLanes(&d_kp[(d + c) * s.wp + w], sums[C + c]);
                StoreLanes(&d_k[(d + c) * s.wp + w], sums[c] + head.key_scale * sums[C + c]);
              }
            });
            ForChunks<kSumsInRegisters>(s.dv, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;  // depths d ... d + C - 1
              const float* d_c_rows = d_c + d * I + queries.begin;
              Vec sums[C];
              SumsOf<C>(queries.size(), [&](int64 t, int c) {
                return d_c_rows[c * I + t] * LoadLanes(p_t + t * s.wp);
              }, sums);
              for (int c = 0; c < C; ++c) StoreLanes(&d_value[(d + c) * s.wp + w], sums[c]);
            });
          }
          // The scales' gradients: each scale multiplies q (or k) in its term.
          d_scales[h] += Dot(head.q.data(), d_qc.data(), s.dq * I);
          d_scales[s.h + h] += Dot(head.q.data(), d_qp.data(), s.dq * I);
          // k is depth-last, d_kp keys-last: four independent scalar sums.
          float key_scale_gradient[4] = {};
          for (int64 d = 0; d < s.dq; ++d)
            for (int64 w = 0; w < W; ++w)
              key_scale_gradient[w % 4] += head.k[w * s.dq + d] * d_kp[d * s.wp + w];
          d_scales[2 * s.h + h] += (key_scale_gradient[0] + key_scale_gradient[1]) +
                                   (key_scale_gradient[2] + key_scale_gradient[3]);
        }
        ScatterSequence(d_queries.data(), n, s.i, s.h * s.dq, I, d_q_out);
        ScatterSequence(d_keys.data(), n, W, s.h * s.dq, s.wp, d_k_out);
        ScatterSequence(d_values.data(), n, W, s.h * s.dv, s.wp, d_v_out);
        // The tables' gradients of this sequence, summed over its heads:
        // d_rv[w, d] += sum_h p d_position[d], d_rq[w, d] += sum_h d_logits qp[d],
        // d_rk[w, d] += sum_h kp[w, d] d_logits. Query groups outermost: what every key
        // of a group reads (d_position and qp of each head, 20 KB at 8 heads of 32
        // channels) stays in the L1 cache across its keys; with keys outermost it was
        // reloaded from L2 for every key (backward at 224² res2's shape ~20 -> ~17.5 ms).
        for (int64 i = 0; i < I; i += kLanes) {
          const Range keys = tables.ranges.KeysOf(j, i / kLanes);
          for (int64 w = keys.begin; w < keys.end; ++w) {
            ForChunks<kSumsInRegisters>(s.dv, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;  // depths d ... d + C - 1
              Vec sums[C];
              SumsOf<C>(s.h, [&](int64 h, int c) {
                return LoadLanes(&heads[h].logits[w * I + i]) *
                       LoadLanes(&d_positions[(h * s.dv + d + c) * I + i]);
              }, sums);
              for (int c = 0; c < C; ++c) {
                AddLanes(d_rv + GroupedIndex(s, s.dv, w, d + c, i), sums[c]);
              }
            });
            ForChunks<kSumsInRegisters / 2>(s.dq, [&](int64 d, auto width) {
              constexpr int C = decltype(width)::value;  // depths d ... d + C - 1
              Vec sums[2 * C];  // query table, then key table
              SumsOf<2 * C>(s.h, [&](int64 h, int c) {
                const Vec d_l = LoadLanes(&d_logits[(h * W + w) * I + i]);
                return c < C ? d_l * LoadLanes(&heads[h].qp[(d + c) * I + i])
                             : heads[h].kp[w * s.dq + d + c - C] * d_l;
              }, sums);
              for (int c = 0; c < C; ++c) {
                AddLanes(d_rq + GroupedIndex(s, s.dq, w, d + c, i), sums[c]);
                AddLanes(d_rk + GroupedIndex(s, s.dq, w, d + c, i), sums[C + c]);
              }
            });
          }
        }
      }
    });
    // Sum the parts' table and scale gradients; put the tables back in [I, W, D] order.
    for (int64 part = 1; part < parts; ++part) {
      const float* source = accumulators.data() + part * part_size;
      for (int64 index = 0; index < part_size; ++index) accumulators[index] += source[index];
    }
    const float* sums = accumulators.data();
    const std::pair<int, int64> table_outputs[] = {
        {kQueryTable, s.dq}, {kKeyTable, s.dq}, {kValueTable, s.dv}};
    for (const auto& [index, depth] : table_outputs) {
      float* out = grads[index]->flat<float>().data();
      for (int64 w = 0; w < W; ++w)
        for (int64 d = 0; d < depth; ++d)
          for (int64 i = 0; i < s.i; ++i)
            out[(i * W + w) * depth + d] = sums[GroupedIndex(s, depth, w, d, i)];
      sums += W * depth * I;
    }
    std::copy(sums, sums + 3 * s.h, grads[kScales]->flat<float>().data());
  }
};

using ::tensorflow::InitOnStartupMarker;
using ::tensorflow::register_op::OpDefBuilderWrapper;

// The operands, in the order of the module comment (both ops start with them).
OpDefBuilderWrapper& WithOperands(OpDefBuilderWrapper&& builder) {
  return builder.Input("query: float")
      .Input("key: float")
      .Input("query_table: float")
      .Input("key_table: float")
      .Input("value: float")
      .Input("value_table: float")
      .Input("scales: float")
      .Input("logit_bias: float");
}

// As REGISTER_OP, whose builder chain cannot start with a function call.
const InitOnStartupMarker forward_registration =
    InitOnStartupMarker{} << WithOperands(OpDefBuilderWrapper("DeeplabAxialAttentionForward"))
    .Output("content: float")
    .Output("position: float")
    .Output("log_normalizer: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle query, value, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(kQuery), 4, &query));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(kValue), 4, &value));
      TF_RETURN_IF_ERROR(c->ReplaceDim(query, 3, c->Dim(value, 3), &out));
      c->set_output(0, out);
      c->set_output(1, out);
      c->set_output(2, c->MakeShape({c->Dim(query, 0), c->Dim(query, 2), c->Dim(query, 1)}));
      return ::tensorflow::OkStatus();
    });

const InitOnStartupMarker backward_registration =
    InitOnStartupMarker{} << WithOperands(OpDefBuilderWrapper("DeeplabAxialAttentionBackward"))
    .Input("log_normalizer: float")
    .Input("d_content: float")
    .Input("d_position: float")
    .Output("d_query: float")
    .Output("d_key: float")
    .Output("d_query_table: float")
    .Output("d_key_table: float")
    .Output("d_value: float")
    .Output("d_value_table: float")
    .Output("d_scales: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int index = 0; index < kNumGradients; ++index) c->set_output(index, c->input(index));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialAttentionForward").Device(::tensorflow::DEVICE_CPU), ForwardOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialAttentionBackward").Device(::tensorflow::DEVICE_CPU), BackwardOp);

}  // namespace
}  // namespace deeplab_axial
