// Batch statistics of the similarity terms of axial attention, from Gram matrices (CPU).
//
// The training-mode similarity batch norm needs, per head h, the sum and the squared sum
// of each term over the valid (query, key) pairs of every sequence n:
//   qr[n,i,w] = q[n,i] . rq[i,w],  kr[n,i,w] = k[n,w] . rk[i,w],  qk[n,i,w] = q[n,i] . k[n,w].
// With the pairs' 0/1 weights summed into the tables by the caller (small tensors),
//   sum qr   = sum_{n,i} q[n,i] . A[i],              A[i] = sum_w valid rq[i,w]
//   sum qr^2 = sum_{n,i} q[n,i]^T B[i] q[n,i],       B[i] = sum_w valid rq[i,w] rq[i,w]^T
// (kr likewise per key), and, when every pair is valid,
//   sum qk = sum_n (sum_i q) . (sum_w k),   sum qk^2 = sum_n <sum_i q q^T, sum_w k k^T>.
// That is O(positions * depth^2) per (sequence, head) and no [.., queries, keys] term.
// The same sums as TF einsums spent most of their time transposing q and k: ~20% of an
// Axial-ResNet-S training step at 224² (benchmarks/README.md).
//
// Layouts (float32, row-major): q [S, J, I, H, D], k [S, J, W, H, D] (J blocks of a
// blocked local span, else 1; sequence-block n = s * J + j), query_table_sum [J, I, D],
// query_table_gram [J, I, D, D], key_table_sum [J, W, D], key_table_gram [J, W, D, D].
// Outputs totals and squares [T, H] with terms (qk, qr, kr) when `with_content`, else
// (qr, kr).
//
// With a band or key mask the qk sums need the terms themselves:
// DeeplabAxialMaskedContentStatistics sums valid[j,i,w] qk and valid qk^2 per head
// (valid [J, I, W]) in O(queries * keys * depth), one (sequence-block, head) at a
// time in cache; the TF ops materialised the [S, J, H, I, W] term, twice (forward and
// backward).
//
// As in axial_attention.cc, each (sequence-block, head) is gathered with its positions on
// the vector lanes ([depth, positions padded to kLanes]), so that every product above is
// element-wise on rows of positions (scalar loops over depths of 4-32 were slower than
// the TF einsums); the content Grams of depths that are whole vectors read the inputs'
// depth-last rows instead (ContentSumsDepthLast). Sums over sequences run in fixed parts,
// added in order: deterministic.

#include <algorithm>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
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

struct StatisticSizes {
  int64 s, j, i, w, h, d;
  int64 terms;
  int64 ip, wp;  // positions padded to a multiple of kLanes
};

// Reads the operand shapes (inputs 0-5) and checks that they agree.
bool ReadStatisticSizes(OpKernelContext* context, bool with_content, StatisticSizes* z) {
  const Tensor& q = context->input(0);
  const Tensor& k = context->input(1);
  const Tensor& q_sum = context->input(2);
  const Tensor& q_gram = context->input(3);
  const Tensor& k_sum = context->input(4);
  const Tensor& k_gram = context->input(5);
  if (q.dims() != 5 || k.dims() != 5 || q_sum.dims() != 3 || q_gram.dims() != 4 ||
      k_sum.dims() != 3 || k_gram.dims() != 4) {
    context->CtxFailure(InvalidArgument(
        "similarity statistics: expected q, k of rank 5, table sums of rank 3 and table "
        "Grams of rank 4, got q ", q.shape().DebugString(), " k ", k.shape().DebugString(),
        " query_table_sum ", q_sum.shape().DebugString(), " query_table_gram ",
        q_gram.shape().DebugString(), " key_table_sum ", k_sum.shape().DebugString(),
        " key_table_gram ", k_gram.shape().DebugString()));
    return false;
  }
  *z = {q.dim_size(0), q.dim_size(1), q.dim_size(2), k.dim_size(2), q.dim_size(3),
        q.dim_size(4), with_content ? 3 : 2, PadToLanes(q.dim_size(2)),
        PadToLanes(k.dim_size(2))};
  const bool agree =
      k.dim_size(0) == z->s && k.dim_size(1) == z->j && k.dim_size(3) == z->h &&
      k.dim_size(4) == z->d && q_sum.dim_size(0) == z->j && q_sum.dim_size(1) == z->i &&
      q_sum.dim_size(2) == z->d && q_gram.dim_size(0) == z->j &&
      q_gram.dim_size(1) == z->i && q_gram.dim_size(2) == z->d &&
      q_gram.dim_size(3) == z->d && k_sum.dim_size(0) == z->j &&
      k_sum.dim_size(1) == z->w && k_sum.dim_size(2) == z->d &&
      k_gram.dim_size(0) == z->j && k_gram.dim_size(1) == z->w &&
      k_gram.dim_size(2) == z->d && k_gram.dim_size(3) == z->d;
  if (!agree) {
    context->CtxFailure(InvalidArgument(
        "similarity statistics: operand shapes disagree: q ", q.shape().DebugString(),
        " k ", k.shape().DebugString(), " query_table_sum ", q_sum.shape().DebugString(),
        " query_table_gram ", q_gram.shape().DebugString(), " key_table_sum ",
        k_sum.shape().DebugString(), " key_table_gram ", k_gram.shape().DebugString()));
    return false;
  }
  return true;
}

// One side's tables (query or key), positions last: sum [J, D, padded] and Gram
// [J, D, D, padded] (with `symmetrize`, gram + gram^T: what the gradient of
// x^T gram x multiplies x by).
struct SideTables {
  int64 padded, depth;
  Buffer sum, gram;
  SideTables(const Tensor& table_sum, const Tensor& table_gram, int64 padded_positions,
             bool symmetrize)
      : padded(padded_positions), depth(table_sum.dim_size(2)) {
    const int64 blocks = table_sum.dim_size(0), positions = table_sum.dim_size(1);
    const float* a = table_sum.flat<float>().data();
    const float* b = table_gram.flat<float>().data();
    sum.assign(blocks * depth * padded, 0.0f);
    gram.assign(blocks * depth * depth * padded, 0.0f);
    for (int64 j = 0; j < blocks; ++j) {
      for (int64 p = 0; p < positions; ++p) {
        const int64 row = j * positions + p;
        for (int64 d = 0; d < depth; ++d) {
          sum[(j * depth + d) * padded + p] = a[row * depth + d];
          for (int64 e = 0; e < depth; ++e) {
            const float* m = b + row * depth * depth;
            gram[((j * depth + d) * depth + e) * padded + p] =
                m[d * depth + e] + (symmetrize ? m[e * depth + d] : 0.0f);
          }
        }
      }
    }
  }
  const float* Sum(int64 j) const { return sum.data() + j * depth * padded; }
  const float* Gram(int64 j) const { return gram.data() + j * depth * depth * padded; }
};

// x [D, padded] of one (sequence-block, head): adds sum_p x_p . sum[p] to *total and
// sum_p x_p^T gram[p] x_p to *square (block j's tables).
void AddRelativeSums(const float* x, const SideTables& tables, int64 j, double* total,
                     double* square) {
  const int64 depth = tables.depth, padded = tables.padded;
  const float* a = tables.Sum(j);
  const float* b = tables.Gram(j);
  Vec linear = Zero(), quadratic = Zero();
  for (int64 p = 0; p < padded; p += kLanes) {
    for (int64 d = 0; d < depth; ++d) {
      const Vec xd = LoadLanes(x + d * padded + p);
      linear += xd * LoadLanes(a + d * padded + p);
      const Vec row = SumOf(depth, [&](int64 e) {
        return LoadLanes(b + (d * depth + e) * padded + p) * LoadLanes(x + e * padded + p);
      });
      quadratic += xd * row;
    }
  }
  *total += HorizontalSum(linear);
  *square += HorizontalSum(quadratic);
}

// sum_p x_p [D] and the (symmetric) Gram sum_p x_p x_p^T [D, D] of x [D, padded].
void ContentSums(const float* x, int64 depth, int64 padded, float* sum, float* gram) {
  for (int64 d = 0; d < depth; ++d) {
    const int64 vectors = padded / kLanes;
    sum[d] = HorizontalSum(
        SumOf(vectors, [&](int64 v) { return LoadLanes(x + d * padded + v * kLanes); }));
    for (int64 e = d; e < depth; ++e) {
      const Vec product = SumOf(vectors, [&](int64 v) {
        return LoadLanes(x + d * padded + v * kLanes) * LoadLanes(x + e * padded + v * kLanes);
      });
      gram[d * depth + e] = gram[e * depth + d] = HorizontalSum(product);
    }
  }
}

// ContentSums from the rows x_p [D] themselves (`stride` floats apart, depth-last as in
// the q and k inputs) when the depth is whole vectors: each Gram row is then a vector
// sum over positions of x_p[d] x_p, kSumsInRegisters rows at a time, with no sum across
// lanes. ContentSums reduces the lanes of every entry, which was most of the statistics'
// time at Axial-ResNet-S's depths of 16 and 32, whose 14 and 7 positions fill one vector
// or less.
void ContentSumsDepthLast(const float* x, int64 positions, int64 stride, int64 depth,
                          float* sum, float* gram) {
  for (int64 v = 0; v < depth; v += kLanes) {
    StoreLanes(sum + v, SumOf(positions, [&](int64 p) { return LoadLanes(x + p * stride + v); }));
    ForChunks<kSumsInRegisters>(depth, [&](int64 d, auto width) {
      constexpr int C = decltype(width)::value;  // Gram rows d ... d + C - 1
      Vec rows[C];
      SumsOf<C>(positions, [&](int64 p, int c) {
        const float* row = x + p * stride;
        return row[d + c] * LoadLanes(row + v);
      }, rows);
      for (int c = 0; c < C; ++c) StoreLanes(gram + (d + c) * depth + v, rows[c]);
    });
  }
}

// The q and k of one sequence-block n, every head: [H, D, padded] each.
struct Gathered {
  const StatisticSizes& z;
  Buffer q, k;
  const float* q_rows = nullptr;  // sequence-block n of the inputs: [I, H, D], [W, H, D]
  const float* k_rows = nullptr;
  explicit Gathered(const StatisticSizes& sizes)
      : z(sizes), q(z.h * z.d * z.ip, 0.0f), k(z.h * z.d * z.wp, 0.0f) {}
  void Gather(OpKernelContext* context, int64 n) {
    q_rows = context->input(0).flat<float>().data() + n * z.i * z.h * z.d;
    k_rows = context->input(1).flat<float>().data() + n * z.w * z.h * z.d;
    GatherSequence(context->input(0).flat<float>().data(), n, z.i, z.h * z.d, z.ip,
                   q.data());
    GatherSequence(context->input(1).flat<float>().data(), n, z.w, z.h * z.d, z.wp,
                   k.data());
  }
  float* Query(int64 h) { return q.data() + h * z.d * z.ip; }
  float* Key(int64 h) { return k.data() + h * z.d * z.wp; }
  // The sum and Gram of head h's queries and of its keys.
  void ContentSumsOf(int64 h, float* q_sum, float* q_gram, float* k_sum, float* k_gram) {
    if (z.d % kLanes == 0) {
      ContentSumsDepthLast(q_rows + h * z.d, z.i, z.h * z.d, z.d, q_sum, q_gram);
      ContentSumsDepthLast(k_rows + h * z.d, z.w, z.h * z.d, z.d, k_sum, k_gram);
    } else {
      ContentSums(Query(h), z.d, z.ip, q_sum, q_gram);
      ContentSums(Key(h), z.d, z.wp, k_sum, k_gram);
    }
  }
};

// The two Gram-statistics ops, whose `with_content` attribute says whether the qk term
// is among the statistics.
class WithContentOpKernel : public OpKernel {
 public:
  explicit WithContentOpKernel(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("with_content", &with_content_));
  }

 protected:
  bool with_content_;
};

class GramStatisticsOp : public WithContentOpKernel {
 public:
  using WithContentOpKernel::WithContentOpKernel;

  void Compute(OpKernelContext* context) override {
    StatisticSizes z;
    if (!ReadStatisticSizes(context, with_content_, &z)) return;
    Tensor *totals_out, *squares_out;
    const TensorShape shape({z.terms, z.h});
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &totals_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, shape, &squares_out));
    const SideTables query_tables(context->input(2), context->input(3), z.ip, false);
    const SideTables key_tables(context->input(4), context->input(5), z.wp, false);
    const int64 sequences = z.s * z.j, size = z.terms * z.h;
    const int64 parts = NumParts(context, sequences);
    std::vector<double> partial(parts * 2 * size, 0.0);
    ParallelParts(context, sequences, parts, [&](int64 part, int64 first, int64 last) {
      double* totals = partial.data() + part * 2 * size;
      double* squares = totals + size;
      Gathered x(z);
      std::vector<float> q_sum(z.d), k_sum(z.d), q_gram(z.d * z.d), k_gram(z.d * z.d);
      const int64 qr = (z.terms - 2) * z.h, kr = (z.terms - 1) * z.h;
      for (int64 n = first; n < last; ++n) {
        const int64 j = n % z.j;
        x.Gather(context, n);
        for (int64 h = 0; h < z.h; ++h) {
          AddRelativeSums(x.Query(h), query_tables, j, totals + qr + h, squares + qr + h);
          AddRelativeSums(x.Key(h), key_tables, j, totals + kr + h, squares + kr + h);
          if (!with_content_) continue;
          x.ContentSumsOf(h, q_sum.data(), q_gram.data(), k_sum.data(), k_gram.data());
          totals[h] += Dot(q_sum.data(), k_sum.data(), z.d);
          squares[h] += Dot(q_gram.data(), k_gram.data(), z.d * z.d);
        }
      }
    });
    float* totals = totals_out->flat<float>().data();
    float* squares = squares_out->flat<float>().data();
    for (int64 index = 0; index < size; ++index) {
      double total = 0.0, square = 0.0;
      for (int64 part = 0; part < parts; ++part) {
        total += partial[part * 2 * size + index];
        square += partial[part * 2 * size + size + index];
      }
      totals[index] = static_cast<float>(total);
      squares[index] = static_cast<float>(square);
    }
  }
};

// d x [D, padded] of one side: a * sum[p] + b * symmetrized gram[p] x_p, plus, with
// content, content_a * other_sum + content_b * 2 other_gram x_p (other_gram symmetric).
void SideGradient(const float* x, const SideTables& tables, int64 j, float a, float b,
                  const float* other_sum, const float* other_gram, float content_a,
                  float content_b, float* d_x) {
  const int64 depth = tables.depth, padded = tables.padded;
  const float* sums = tables.Sum(j);
  const float* grams = tables.Gram(j);
  for (int64 p = 0; p < padded; p += kLanes) {
    for (int64 d = 0; d < depth; ++d) {
      const Vec relative = SumOf(depth, [&](int64 e) {
        return LoadLanes(grams + (d * depth + e) * padded + p) * LoadLanes(x + e * padded + p);
      });
      Vec value = a * LoadLanes(sums + d * padded + p) + b * relative;
      if (other_sum != nullptr) {
        const Vec content = SumOf(depth, [&](int64 e) {
          return other_gram[d * depth + e] * LoadLanes(x + e * padded + p);
        });
        value += content_a * other_sum[d] + (2.0f * content_b) * content;
      }
      StoreLanes(d_x + d * padded + p, value);
    }
  }
}

// Adds sum_h a_h x_h to d_sum [D, padded] and sum_h b_h x_h x_h^T to d_gram
// [D, D, padded] (x_h [D, padded] apart by `head_stride`), summed over heads in
// registers first.
void AddTableGradients(const float* x, int64 head_stride, int64 heads, int64 depth,
                       int64 padded, const float* a, const float* b, float* d_sum,
                       float* d_gram) {
  for (int64 p = 0; p < padded; p += kLanes) {
    for (int64 d = 0; d < depth; ++d) {
      AddLanes(d_sum + d * padded + p, SumOf(heads, [&](int64 h) {
                 return a[h] * LoadLanes(x + h * head_stride + d * padded + p);
               }));
      for (int64 e = 0; e < depth; ++e) {
        AddLanes(d_gram + (d * depth + e) * padded + p, SumOf(heads, [&](int64 h) {
                   const float* xh = x + h * head_stride;
                   return (b[h] * LoadLanes(xh + d * padded + p)) *
                          LoadLanes(xh + e * padded + p);
                 }));
      }
    }
  }
}

// accumulators [J, D(, D), padded] -> out [J, positions, D(, D)].
void PositionsFirst(const float* in, int64 blocks, int64 columns, int64 padded,
                    int64 positions, float* out) {
  for (int64 j = 0; j < blocks; ++j)
    for (int64 p = 0; p < positions; ++p)
      for (int64 c = 0; c < columns; ++c)
        out[(j * positions + p) * columns + c] = in[(j * columns + c) * padded + p];
}

class GramStatisticsGradOp : public WithContentOpKernel {
 public:
  using WithContentOpKernel::WithContentOpKernel;

  void Compute(OpKernelContext* context) override {
    StatisticSizes z;
    if (!ReadStatisticSizes(context, with_content_, &z)) return;
    const TensorShape upstream_shape({z.terms, z.h});
    OP_REQUIRES(context,
                context->input(6).shape() == upstream_shape &&
                    context->input(7).shape() == upstream_shape,
                InvalidArgument("similarity statistics: upstream gradients must be ",
                                upstream_shape.DebugString(), ", got ",
                                context->input(6).shape().DebugString(), " and ",
                                context->input(7).shape().DebugString()));
    Tensor* grads[6];
    for (int index = 0; index < 6; ++index) {
      OP_REQUIRES_OK(context, context->allocate_output(index, context->input(index).shape(),
                                                       &grads[index]));
    }
    const float* d_totals = context->input(6).flat<float>().data();
    const float* d_squares = context->input(7).flat<float>().data();
    const float* d_qr_total = d_totals + (z.terms - 2) * z.h;
    const float* d_kr_total = d_totals + (z.terms - 1) * z.h;
    const float* d_qr_square = d_squares + (z.terms - 2) * z.h;
    const float* d_kr_square = d_squares + (z.terms - 1) * z.h;
    const SideTables query_tables(context->input(2), context->input(3), z.ip, true);
    const SideTables key_tables(context->input(4), context->input(5), z.wp, true);
    const int64 sequences = z.s * z.j;
    const int64 parts = NumParts(context, sequences);
    // Per part: the query side's d_sum [J, D, ip] and d_gram [J, D, D, ip], then the key
    // side's likewise with wp.
    const int64 query_size = z.j * z.d * (z.d + 1) * z.ip;
    const int64 part_size = query_size + z.j * z.d * (z.d + 1) * z.wp;
    Buffer accumulators(parts * part_size, 0.0f);
    ParallelParts(context, sequences, parts, [&](int64 part, int64 first, int64 last) {
      float* query_sums = accumulators.data() + part * part_size;
      float* query_grams = query_sums + z.j * z.d * z.ip;
      float* key_sums = query_sums + query_size;
      float* key_grams = key_sums + z.j * z.d * z.wp;
      Gathered x(z);
      Buffer d_q(z.h * z.d * z.ip), d_k(z.h * z.d * z.wp);  // every head, positions last
      std::vector<float> q_sum(z.d), k_sum(z.d), q_gram(z.d * z.d), k_gram(z.d * z.d);
      for (int64 n = first; n < last; ++n) {
        const int64 j = n % z.j;
        x.Gather(context, n);
        for (int64 h = 0; h < z.h; ++h) {
          const float* key_sum = nullptr;
          const float* query_sum = nullptr;
          float content_total = 0.0f, content_square = 0.0f;
          if (with_content_) {
            x.ContentSumsOf(h, q_sum.data(), q_gram.data(), k_sum.data(), k_gram.data());
            key_sum = k_sum.data();
            query_sum = q_sum.data();
            content_total = d_totals[h];
            content_square = d_squares[h];
          }
          SideGradient(x.Query(h), query_tables, j, d_qr_total[h], d_qr_square[h], key_sum,
                       k_gram.data(), content_total, content_square,
                       d_q.data() + h * z.d * z.ip);
          SideGradient(x.Key(h), key_tables, j, d_kr_total[h], d_kr_square[h], query_sum,
                       q_gram.data(), content_total, content_square,
                       d_k.data() + h * z.d * z.wp);
        }
        ScatterSequence(d_q.data(), n, z.i, z.h * z.d, z.ip, grads[0]->flat<float>().data());
        ScatterSequence(d_k.data(), n, z.w, z.h * z.d, z.wp, grads[1]->flat<float>().data());
        AddTableGradients(x.q.data(), z.d * z.ip, z.h, z.d, z.ip, d_qr_total, d_qr_square,
                          query_sums + j * z.d * z.ip, query_grams + j * z.d * z.d * z.ip);
        AddTableGradients(x.k.data(), z.d * z.wp, z.h, z.d, z.wp, d_kr_total, d_kr_square,
                          key_sums + j * z.d * z.wp, key_grams + j * z.d * z.d * z.wp);
      }
    });
    for (int64 part = 1; part < parts; ++part) {
      const float* source = accumulators.data() + part * part_size;
      for (int64 index = 0; index < part_size; ++index) accumulators[index] += source[index];
    }
    const float* query_sums = accumulators.data();
    const float* key_sums = query_sums + query_size;
    PositionsFirst(query_sums, z.j, z.d, z.ip, z.i, grads[2]->flat<float>().data());
    PositionsFirst(query_sums + z.j * z.d * z.ip, z.j, z.d * z.d, z.ip, z.i,
                   grads[3]->flat<float>().data());
    PositionsFirst(key_sums, z.j, z.d, z.wp, z.w, grads[4]->flat<float>().data());
    PositionsFirst(key_sums + z.j * z.d * z.wp, z.j, z.d * z.d, z.wp, z.w,
                   grads[5]->flat<float>().data());
  }
};

struct MaskedSizes {
  int64 s, j, i, w, h, d;
  int64 ip, wp;
};

// Reads q [S, J, I, H, D], k [S, J, W, H, D] and valid [J, I, W] and checks them.
bool ReadMaskedSizes(OpKernelContext* context, MaskedSizes* z) {
  const Tensor& q = context->input(0);
  const Tensor& k = context->input(1);
  const Tensor& valid = context->input(2);
  const bool agree =
      q.dims() == 5 && k.dims() == 5 && valid.dims() == 3 &&
      k.dim_size(0) == q.dim_size(0) && k.dim_size(1) == q.dim_size(1) &&
      k.dim_size(3) == q.dim_size(3) && k.dim_size(4) == q.dim_size(4) &&
      valid.dim_size(0) == q.dim_size(1) && valid.dim_size(1) == q.dim_size(2) &&
      valid.dim_size(2) == k.dim_size(2);
  if (!agree) {
    context->CtxFailure(InvalidArgument(
        "masked content statistics: expected q [S, J, I, H, D], k [S, J, W, H, D] and "
        "valid [J, I, W], got q ", q.shape().DebugString(), " k ", k.shape().DebugString(),
        " valid ", valid.shape().DebugString()));
    return false;
  }
  *z = {q.dim_size(0), q.dim_size(1), q.dim_size(2), k.dim_size(2), q.dim_size(3),
        q.dim_size(4), PadToLanes(q.dim_size(2)), PadToLanes(k.dim_size(2))};
  return true;
}

// The ranges of the pairs `valid` keeps (the loops skip the others, which count 0).
PairRanges ValidRanges(OpKernelContext* context, const MaskedSizes& z) {
  const float* valid = context->input(2).flat<float>().data();
  return PairRanges(z.j, z.i, z.w, [valid, &z](int64 j, int64 i, int64 w) {
    return valid[(j * z.i + i) * z.w + w] != 0.0f;
  });
}

// One (sequence-block, head): q [D, ip] (queries on the lanes), k [W, D], and the
// block's mask [W, ip].
struct MaskedHead {
  const MaskedSizes& z;
  Buffer q, k;
  explicit MaskedHead(const MaskedSizes& sizes)
      : z(sizes), q(z.d * z.ip, 0.0f), k(z.w * z.d) {}
  void Gather(OpKernelContext* context, int64 n, int64 h) {
    GatherPositionsLast(context->input(0).flat<float>().data(), n, h, z.i, z.ip, z.h, z.d,
                        q.data());
    GatherDepthLast(context->input(1).flat<float>().data(), n, h, z.w, z.h, z.d, k.data());
  }
  // qk of key w for the queries i..i+kLanes.
  Vec Term(int64 w, int64 i) const {
    return SumOf(z.d, [&](int64 d) { return k[w * z.d + d] * LoadLanes(&q[d * z.ip + i]); });
  }
};

class MaskedContentStatisticsOp : public OpKernel {
 public:
  explicit MaskedContentStatisticsOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    MaskedSizes z;
    if (!ReadMaskedSizes(context, &z)) return;
    Tensor *total_out, *square_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({z.h}), &total_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({z.h}), &square_out));
    // Zero in the padding lanes: they count nothing.
    const Buffer mask =
        BlocksQueriesLast(context->input(2).flat<float>().data(), z.j, z.i, z.w, z.ip);
    const PairRanges ranges = ValidRanges(context, z);
    const int64 sequences = z.s * z.j;
    const int64 parts = NumParts(context, sequences);
    std::vector<double> partial(parts * 2 * z.h, 0.0);
    ParallelParts(context, sequences, parts, [&](int64 part, int64 first, int64 last) {
      double* totals = partial.data() + part * 2 * z.h;
      double* squares = totals + z.h;
      MaskedHead head(z);
      for (int64 n = first; n < last; ++n) {
        const float* valid = mask.data() + (n % z.j) * z.w * z.ip;
        for (int64 h = 0; h < z.h; ++h) {
          head.Gather(context, n, h);
          Vec linear = Zero(), quadratic = Zero();
          for (int64 i = 0; i < z.ip; i += kLanes) {
            const Range keys = ranges.KeysOf(n % z.j, i / kLanes);
            for (int64 w = keys.begin; w < keys.end; ++w) {
              const Vec term = head.Term(w, i);
              const Vec masked = LoadLanes(valid + w * z.ip + i) * term;
              linear += masked;
              quadratic += masked * term;
            }
          }
          totals[h] += HorizontalSum(linear);
          squares[h] += HorizontalSum(quadratic);
        }
      }
    });
    float* totals = total_out->flat<float>().data();
    float* squares = square_out->flat<float>().data();
    for (int64 h = 0; h < z.h; ++h) {
      double total = 0.0, square = 0.0;
      for (int64 part = 0; part < parts; ++part) {
        total += partial[part * 2 * z.h + h];
        square += partial[part * 2 * z.h + z.h + h];
      }
      totals[h] = static_cast<float>(total);
      squares[h] = static_cast<float>(square);
    }
  }
};

class MaskedContentStatisticsGradOp : public OpKernel {
 public:
  explicit MaskedContentStatisticsGradOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    MaskedSizes z;
    if (!ReadMaskedSizes(context, &z)) return;
    OP_REQUIRES(context,
                context->input(3).shape() == TensorShape({z.h}) &&
                    context->input(4).shape() == TensorShape({z.h}),
                InvalidArgument("masked content statistics: upstream gradients must be [",
                                z.h, "], got ", context->input(3).shape().DebugString(),
                                " and ", context->input(4).shape().DebugString()));
    Tensor *d_q_out, *d_k_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, context->input(0).shape(), &d_q_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, context->input(1).shape(), &d_k_out));
    // Zero in the padding lanes: they count nothing.
    const Buffer mask =
        BlocksQueriesLast(context->input(2).flat<float>().data(), z.j, z.i, z.w, z.ip);
    const PairRanges ranges = ValidRanges(context, z);
    const float* d_total = context->input(3).flat<float>().data();
    const float* d_square = context->input(4).flat<float>().data();
    const int64 cost = z.w * z.ip * z.d * 3;
    // Every element of d_q and d_k is written once, per (sequence-block, head).
    ParallelFor(context, z.s * z.j * z.h, cost, [&](int64 first, int64 last) {
      MaskedHead head(z);
      Buffer d_term(z.w * z.ip), d_term_t(z.ip * z.wp, 0.0f);
      Buffer d_q(z.d * z.ip), d_k(z.d * z.wp);
      for (int64 nh = first; nh < last; ++nh) {
        const int64 n = nh / z.h, h = nh % z.h;
        const float* valid = mask.data() + (n % z.j) * z.w * z.ip;
        head.Gather(context, n, h);
        // d term = valid (d_total + 2 d_square term), per (key, query); zero outside the
        // ranges (read by the key side's whole rows).
        for (int64 i = 0; i < z.ip; i += kLanes) {
          const Range keys = ranges.KeysOf(n % z.j, i / kLanes);
          for (int64 w = 0; w < keys.begin; ++w) StoreLanes(&d_term[w * z.ip + i], Zero());
          for (int64 w = keys.end; w < z.w; ++w) StoreLanes(&d_term[w * z.ip + i], Zero());
          for (int64 w = keys.begin; w < keys.end; ++w) {
            StoreLanes(&d_term[w * z.ip + i],
                       LoadLanes(valid + w * z.ip + i) *
                           (d_total[h] + (2.0f * d_square[h]) * head.Term(w, i)));
          }
          const float* d_term_keys = d_term.data() + keys.begin * z.ip + i;
          for (int64 d = 0; d < z.d; ++d) {
            const float* k = head.k.data() + keys.begin * z.d + d;
            StoreLanes(&d_q[d * z.ip + i], SumOf(keys.size(), [&](int64 t) {
                         return k[t * z.d] * LoadLanes(d_term_keys + t * z.ip);
                       }));
          }
        }
        // Key side with keys on the lanes.
        TransposeKeyGroups(d_term.data(), z.w, z.ip, ranges, n % z.j, z.wp, d_term_t.data());
        for (int64 w = 0; w < z.wp; w += kLanes) {
          const Range queries = ranges.QueriesOf(n % z.j, w / kLanes);
          const float* d_term_t_queries = d_term_t.data() + queries.begin * z.wp + w;
          for (int64 d = 0; d < z.d; ++d) {
            const float* q = head.q.data() + d * z.ip + queries.begin;
            StoreLanes(&d_k[d * z.wp + w], SumOf(queries.size(), [&](int64 t) {
                         return q[t] * LoadLanes(d_term_t_queries + t * z.wp);
                       }));
          }
        }
        ScatterPositionsLast(d_q.data(), n, h, z.i, z.ip, z.h, z.d,
                             d_q_out->flat<float>().data());
        ScatterPositionsLast(d_k.data(), n, h, z.w, z.wp, z.h, z.d,
                             d_k_out->flat<float>().data());
      }
    });
  }
};

REGISTER_OP("DeeplabAxialGramStatistics")
    .Input("query: float")
    .Input("key: float")
    .Input("query_table_sum: float")
    .Input("query_table_gram: float")
    .Input("key_table_sum: float")
    .Input("key_table_gram: float")
    .Attr("with_content: bool")
    .Output("totals: float")
    .Output("squares: float")
    .SetShapeFn([](InferenceContext* c) {
      bool with_content;
      TF_RETURN_IF_ERROR(c->GetAttr("with_content", &with_content));
      ::tensorflow::shape_inference::ShapeHandle query;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &query));
      const auto out = c->MakeShape({with_content ? 3 : 2, c->Dim(query, 3)});
      c->set_output(0, out);
      c->set_output(1, out);
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("DeeplabAxialGramStatisticsGrad")
    .Input("query: float")
    .Input("key: float")
    .Input("query_table_sum: float")
    .Input("query_table_gram: float")
    .Input("key_table_sum: float")
    .Input("key_table_gram: float")
    .Input("d_totals: float")
    .Input("d_squares: float")
    .Attr("with_content: bool")
    .Output("d_query: float")
    .Output("d_key: float")
    .Output("d_query_table_sum: float")
    .Output("d_query_table_gram: float")
    .Output("d_key_table_sum: float")
    .Output("d_key_table_gram: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int index = 0; index < 6; ++index) c->set_output(index, c->input(index));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialGramStatistics").Device(::tensorflow::DEVICE_CPU), GramStatisticsOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialGramStatisticsGrad").Device(::tensorflow::DEVICE_CPU),
    GramStatisticsGradOp);

REGISTER_OP("DeeplabAxialMaskedContentStatistics")
    .Input("query: float")
    .Input("key: float")
    .Input("valid: float")
    .Output("total: float")
    .Output("square: float")
    .SetShapeFn([](InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle query;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &query));
      c->set_output(0, c->Vector(c->Dim(query, 3)));
      c->set_output(1, c->Vector(c->Dim(query, 3)));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("DeeplabAxialMaskedContentStatisticsGrad")
    .Input("query: float")
    .Input("key: float")
    .Input("valid: float")
    .Input("d_total: float")
    .Input("d_square: float")
    .Output("d_query: float")
    .Output("d_key: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialMaskedContentStatistics").Device(::tensorflow::DEVICE_CPU),
    MaskedContentStatisticsOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialMaskedContentStatisticsGrad").Device(::tensorflow::DEVICE_CPU),
    MaskedContentStatisticsGradOp);

}  // namespace
}  // namespace deeplab_axial
