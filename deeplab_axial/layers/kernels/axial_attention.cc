// Fused position-sensitive axial attention for the CPU (forward and backward).
//
// One kernel computes, for every sequence n, head h and query i,
//   logits[w] = qc[n,i,h] . kc[n,w,h] + qp[n,i,h] . rq[i,w] + kp[n,w,h] . rk[i,w]
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
// Layouts (float32, row-major): qc [N, I, H, Dc], kc [N, W, H, Dc], qp [N, I, H, Dp],
// rq [I, W, Dp], kp [N, W, H, Dr], rk [I, W, Dr], v [N, W, H, Dv], rv [I, W, Dv].
// Masks and the batch-norm offset arrive as extra depth channels of these operands
// (see deeplab_axial/layers/axial_attention.py), so the kernel knows nothing of them.

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

struct Sizes {
  int64 n, i, w, h, dc, dp, dr, dv;
  int64 ip;  // i padded to a multiple of kLanes
  int64 wp;  // w padded to a multiple of kLanes
};

// Reads the operand shapes and checks that they agree.
bool ReadSizes(OpKernelContext* context, Sizes* s) {
  const Tensor& qc = context->input(0);
  const Tensor& kc = context->input(1);
  const Tensor& qp = context->input(2);
  const Tensor& rq = context->input(3);
  const Tensor& kp = context->input(4);
  const Tensor& rk = context->input(5);
  const Tensor& v = context->input(6);
  const Tensor& rv = context->input(7);
  for (const Tensor* t : {&qc, &kc, &qp, &kp, &v}) {
    if (t->dims() != 4) {
      context->CtxFailure(InvalidArgument("axial attention: expected a 4-D operand, got ",
                                          t->shape().DebugString()));
      return false;
    }
  }
  for (const Tensor* t : {&rq, &rk, &rv}) {
    if (t->dims() != 3) {
      context->CtxFailure(InvalidArgument("axial attention: expected a 3-D table, got ",
                                          t->shape().DebugString()));
      return false;
    }
  }
  *s = {qc.dim_size(0), qc.dim_size(1), kc.dim_size(1), qc.dim_size(2),
        qc.dim_size(3), qp.dim_size(3), kp.dim_size(3), v.dim_size(3),
        PadToLanes(qc.dim_size(1)), PadToLanes(kc.dim_size(1))};
  const bool agree =
      kc.dim_size(0) == s->n && kc.dim_size(2) == s->h && kc.dim_size(3) == s->dc &&
      qp.dim_size(0) == s->n && qp.dim_size(1) == s->i && qp.dim_size(2) == s->h &&
      kp.dim_size(0) == s->n && kp.dim_size(1) == s->w && kp.dim_size(2) == s->h &&
      v.dim_size(0) == s->n && v.dim_size(1) == s->w && v.dim_size(2) == s->h &&
      rq.dim_size(0) == s->i && rq.dim_size(1) == s->w && rq.dim_size(2) == s->dp &&
      rk.dim_size(0) == s->i && rk.dim_size(1) == s->w && rk.dim_size(2) == s->dr &&
      rv.dim_size(0) == s->i && rv.dim_size(1) == s->w && rv.dim_size(2) == s->dv;
  if (!agree) {
    context->CtxFailure(InvalidArgument(
        "axial attention: operand shapes disagree: qc ", qc.shape().DebugString(), " kc ",
        kc.shape().DebugString(), " qp ", qp.shape().DebugString(), " rq ",
        rq.shape().DebugString(), " kp ", kp.shape().DebugString(), " rk ",
        rk.shape().DebugString(), " v ", v.shape().DebugString(), " rv ",
        rv.shape().DebugString()));
    return false;
  }
  return true;
}

// Every per-(sequence, head) loop below runs over the queries i innermost, on rows of
// `ip` floats: a query's logits, softmax and retrievals are then element-wise
// operations on vectors of queries, with no horizontal sum per query (a loop of short
// dot products over keys measured ~3x slower). The key-side gradients, sums over
// queries, run with keys on the lanes on transposed weights.
//
// Buffers start on a 64-byte boundary and rows hold a multiple of kLanes floats, so that
// Eigen's exp runs on whole aligned packets. (On an unaligned row Eigen exponentiates
// the first few entries with its scalar exp, which rounds differently: results then
// changed with the buffers' addresses from run to run.)
using ArrayMap = Eigen::Map<Eigen::ArrayXf, Eigen::Aligned64>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf, Eigen::Aligned64>;

// table [I, W, D] -> [W, D, stride] (queries last, zero-padded to `stride`).
Buffer QueriesLast(const float* table, int64 queries, int64 stride, int64 keys,
                   int64 depth) {
  Buffer out(stride * keys * depth, 0.0f);
  for (int64 i = 0; i < queries; ++i)
    for (int64 w = 0; w < keys; ++w)
      for (int64 d = 0; d < depth; ++d)
        out[(w * depth + d) * stride + i] = table[(i * keys + w) * depth + d];
  return out;
}

// The tables, queries last ([W, D, I]); shared by every (sequence, head).
struct Tables {
  Buffer rq, rk, rv;
  Tables(OpKernelContext* context, const Sizes& s)
      : rq(QueriesLast(context->input(3).flat<float>().data(), s.i, s.ip, s.w, s.dp)),
        rk(QueriesLast(context->input(5).flat<float>().data(), s.i, s.ip, s.w, s.dr)),
        rv(QueriesLast(context->input(7).flat<float>().data(), s.i, s.ip, s.w, s.dv)) {}
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
  Buffer qc, qp;     // [D, I]
  Buffer kc, kp, v;  // [W, D]
  Buffer logits;     // [W, I]
  explicit Head(const Sizes& sizes)
      : s(sizes), qc(s.dc * s.ip), qp(s.dp * s.ip), kc(s.w * s.dc), kp(s.w * s.dr),
        v(s.w * s.dv), logits(s.w * s.ip) {}

  void Gather(OpKernelContext* context, int64 n, int64 h) {
    GatherPositionsLast(context->input(0).flat<float>().data(), n, h, s.i, s.ip, s.h, s.dc,
                        qc.data());
    GatherPositionsLast(context->input(2).flat<float>().data(), n, h, s.i, s.ip, s.h, s.dp,
                        qp.data());
    GatherDepthLast(context->input(1).flat<float>().data(), n, h, s.w, s.h, s.dc, kc.data());
    GatherDepthLast(context->input(4).flat<float>().data(), n, h, s.w, s.h, s.dr, kp.data());
    GatherDepthLast(context->input(6).flat<float>().data(), n, h, s.w, s.h, s.dv, v.data());
  }

  // logits[w, i] = qc[:, i] . kc[w] + qp[:, i] . rq[w, :, i] + kp[w] . rk[w, :, i].
  void ComputeLogits(const Tables& tables) {
    const int64 I = s.ip;
    for (int64 w = 0; w < s.w; ++w) {
      const float* rq = tables.rq.data() + w * s.dp * I;
      const float* rk = tables.rk.data() + w * s.dr * I;
      for (int64 i = 0; i < I; i += kLanes) {
        const Vec sum =
            SumOf(s.dc, [&](int64 d) { return kc[w * s.dc + d] * LoadLanes(&qc[d * I + i]); }) +
            SumOf(s.dp, [&](int64 d) {
              return LoadLanes(&qp[d * I + i]) * LoadLanes(rq + d * I + i);
            }) +
            SumOf(s.dr, [&](int64 d) { return kp[w * s.dr + d] * LoadLanes(rk + d * I + i); });
        StoreLanes(&logits[w * I + i], sum);
      }
    }
  }

  // logits[w, i] <- exp(logits[w, i] - shift[i]) (Eigen's vectorized exp); shift has
  // s.ip entries.
  void Exponentiate(const float* shift) {
    const ConstArrayMap shift_row(shift, s.ip);
    for (int64 w = 0; w < s.w; ++w) {
      ArrayMap row(logits.data() + w * s.ip, s.ip);
      row = (row - shift_row).exp();
    }
  }
};

// Cycles (roughly) of one (sequence, head): per logit, the contractions and an exp.
int64 HeadCost(const Sizes& s) {
  return s.ip * s.w * (s.dc + s.dp + s.dr + 2 * s.dv + 20) / kLanes * 4;
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
    ParallelFor(context, s.n * s.h, HeadCost(s), [&](int64 first, int64 last) {
      Head head(s);
      Buffer maximum(I), total(I), retrieved(2 * s.dv * I);
      for (int64 nh = first; nh < last; ++nh) {
        const int64 n = nh / s.h, h = nh % s.h;
        head.Gather(context, n, h);
        head.ComputeLogits(tables);
        const float* logits = head.logits.data();
        for (int64 i = 0; i < I; i += kLanes) {
          Vec largest = LoadLanes(logits + i);
          for (int64 w = 1; w < s.w; ++w) {
            const Vec row = LoadLanes(logits + w * I + i);
            largest = row > largest ? row : largest;
          }
          StoreLanes(&maximum[i], largest);
        }
        head.Exponentiate(maximum.data());
        const float* p = head.logits.data();
        for (int64 i = 0; i < I; i += kLanes) {
          const Vec sum = SumOf(s.w, [&](int64 w) { return LoadLanes(p + w * I + i); });
          StoreLanes(&total[i], sum);
          const Vec inverse = 1.0f / sum;
          for (int64 d = 0; d < s.dv; ++d) {
            const Vec content_sum = SumOf(s.w, [&](int64 w) {
              return head.v[w * s.dv + d] * LoadLanes(p + w * I + i);
            });
            const Vec position_sum = SumOf(s.w, [&](int64 w) {
              return LoadLanes(p + w * I + i) *
                     LoadLanes(&tables.rv[(w * s.dv + d) * I + i]);
            });
            StoreLanes(&retrieved[d * I + i], content_sum * inverse);
            StoreLanes(&retrieved[(s.dv + d) * I + i], position_sum * inverse);
          }
        }
        for (int64 i = 0; i < s.i; ++i) {
          normalizer_out[nh * s.i + i] = maximum[i] + std::log(total[i]);
        }
        ScatterPositionsLast(retrieved.data(), n, h, s.i, I, s.h, s.dv, content_out);
        ScatterPositionsLast(retrieved.data() + s.dv * I, n, h, s.i, I, s.h, s.dv,
                             position_out);
      }
    });
  }
};

class BackwardOp : public OpKernel {
 public:
  explicit BackwardOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    Sizes s;
    if (!ReadSizes(context, &s)) return;
    Tensor* grads[8];
    for (int index = 0; index < 8; ++index) {
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
    // and the tables at the end), so the outputs are not zero-filled first.
    const Tables tables(context, s);
    const Buffer rk_keys_last =
        KeysLast(context->input(5).flat<float>().data(), s, s.dr);
    const float* log_normalizer = context->input(8).flat<float>().data();
    const float* d_content = context->input(9).flat<float>().data();
    const float* d_position = context->input(10).flat<float>().data();
    float* d_qc = grads[0]->flat<float>().data();
    float* d_kc = grads[1]->flat<float>().data();
    float* d_qp = grads[2]->flat<float>().data();
    float* d_kp = grads[4]->flat<float>().data();
    float* d_v = grads[6]->flat<float>().data();
    const int64 I = s.ip, W = s.w;
    // The table gradients sum over every (n, h): one accumulator per part of the
    // sequences, added in part order.
    const int64 parts = NumParts(context, s.n);
    const int64 table_size = W * (s.dp + s.dr + s.dv) * I;
    Buffer accumulators(parts * table_size, 0.0f);
    ParallelParts(context, s.n, parts, [&](int64 part, int64 first, int64 last) {
      float* d_rq = accumulators.data() + part * table_size;  // [W, Dp, I]
      float* d_rk = d_rq + W * s.dp * I;                       // [W, Dr, I]
      float* d_rv = d_rk + W * s.dr * I;                       // [W, Dv, I]
      // Every head of a sequence is kept until the table gradients, which sum over the
      // heads in registers: one read-modify-write of the accumulators per sequence
      // instead of per head (those were a third of this kernel's time).
      std::vector<Head> heads(s.h, Head(s));
      Buffer d_logits(s.h * W * I), normalizer(I, 0.0f);
      Buffer d_out(s.h * 2 * s.dv * I);                        // [H, 2 * Dv, I]
      Buffer d_query(s.dc * I), d_query_position(s.dp * I);
      Buffer d_key(s.dc * s.wp), d_key_position(s.dr * s.wp),
          d_value(s.dv * s.wp);  // [D, wp]
      Buffer weights_t(s.i * s.wp, 0.0f), d_logits_t(s.i * s.wp, 0.0f);
      for (int64 n = first; n < last; ++n) {
        for (int64 h = 0; h < s.h; ++h) {
          Head& head = heads[h];
          head.Gather(context, n, h);
          head.ComputeLogits(tables);
          std::copy(log_normalizer + (n * s.h + h) * s.i,
                    log_normalizer + (n * s.h + h + 1) * s.i, normalizer.begin());
          head.Exponentiate(normalizer.data());
          const float* p_all = head.logits.data();  // the weights p[w, i]
          float* d_l_all = d_logits.data() + h * W * I;
          float* d_c = d_out.data() + h * 2 * s.dv * I;  // d_content [Dv, I]
          float* d_pos = d_c + s.dv * I;                  // d_position [Dv, I]
          GatherPositionsLast(d_content, n, h, s.i, I, s.h, s.dv, d_c);
          GatherPositionsLast(d_position, n, h, s.i, I, s.h, s.dv, d_pos);
          for (int64 i = 0; i < I; i += kLanes) {
            // d_p[w, i] = d_content[:, i] . v[w] + d_position[:, i] . rv[w, :, i], then
            // the softmax backward d_logits = p * (d_p - sum_w p d_p).
            Vec expected = Zero();
            for (int64 w = 0; w < W; ++w) {
              const Vec d_p = SumOf(s.dv, [&](int64 d) {
                return head.v[w * s.dv + d] * LoadLanes(d_c + d * I + i) +
                       LoadLanes(d_pos + d * I + i) *
                           LoadLanes(&tables.rv[(w * s.dv + d) * I + i]);
              });
              expected += LoadLanes(p_all + w * I + i) * d_p;
              StoreLanes(d_l_all + w * I + i, d_p);
            }
            for (int64 w = 0; w < W; ++w) {
              StoreLanes(d_l_all + w * I + i, LoadLanes(p_all + w * I + i) *
                                                  (LoadLanes(d_l_all + w * I + i) - expected));
            }
            // Query side, element-wise over queries.
            for (int64 d = 0; d < s.dc; ++d) {
              StoreLanes(&d_query[d * I + i], SumOf(W, [&](int64 w) {
                           return head.kc[w * s.dc + d] * LoadLanes(d_l_all + w * I + i);
                         }));
            }
            for (int64 d = 0; d < s.dp; ++d) {
              StoreLanes(&d_query_position[d * I + i], SumOf(W, [&](int64 w) {
                           return LoadLanes(d_l_all + w * I + i) *
                                  LoadLanes(&tables.rq[(w * s.dp + d) * I + i]);
                         }));
            }
          }
          // Key side: sums over queries, with keys on the lanes (transposed weights).
          Transpose(p_all, W, I, s.i, s.wp, weights_t.data());
          Transpose(d_l_all, W, I, s.i, s.wp, d_logits_t.data());
          for (int64 w = 0; w < s.wp; w += kLanes) {
            for (int64 d = 0; d < s.dc; ++d) {
              StoreLanes(&d_key[d * s.wp + w], SumOf(s.i, [&](int64 i) {
                           return head.qc[d * I + i] * LoadLanes(&d_logits_t[i * s.wp + w]);
                         }));
            }
            for (int64 d = 0; d < s.dr; ++d) {
              StoreLanes(&d_key_position[d * s.wp + w], SumOf(s.i, [&](int64 i) {
                           return LoadLanes(&rk_keys_last[(i * s.dr + d) * s.wp + w]) *
                                  LoadLanes(&d_logits_t[i * s.wp + w]);
                         }));
            }
            for (int64 d = 0; d < s.dv; ++d) {
              StoreLanes(&d_value[d * s.wp + w], SumOf(s.i, [&](int64 i) {
                           return d_c[d * I + i] * LoadLanes(&weights_t[i * s.wp + w]);
                         }));
            }
          }
          ScatterPositionsLast(d_query.data(), n, h, s.i, I, s.h, s.dc, d_qc);
          ScatterPositionsLast(d_query_position.data(), n, h, s.i, I, s.h, s.dp, d_qp);
          ScatterPositionsLast(d_key.data(), n, h, W, s.wp, s.h, s.dc, d_kc);
          ScatterPositionsLast(d_key_position.data(), n, h, W, s.wp, s.h, s.dr, d_kp);
          ScatterPositionsLast(d_value.data(), n, h, W, s.wp, s.h, s.dv, d_v);
        }
        // The tables' gradients of this sequence, summed over its heads:
        // d_rv[w, d] += sum_h p d_position[d], d_rq[w, d] += sum_h d_logits qp[d],
        // d_rk[w, d] += sum_h kp[w, d] d_logits.
        for (int64 w = 0; w < W; ++w) {
          for (int64 i = 0; i < I; i += kLanes) {
            for (int64 d = 0; d < s.dv; ++d) {
              AddLanes(d_rv + (w * s.dv + d) * I + i, SumOf(s.h, [&](int64 h) {
                         return LoadLanes(&heads[h].logits[w * I + i]) *
                                LoadLanes(&d_out[(h * 2 * s.dv + s.dv + d) * I + i]);
                       }));
            }
            for (int64 d = 0; d < s.dp; ++d) {
              AddLanes(d_rq + (w * s.dp + d) * I + i, SumOf(s.h, [&](int64 h) {
                         return LoadLanes(&d_logits[(h * W + w) * I + i]) *
                                LoadLanes(&heads[h].qp[d * I + i]);
                       }));
            }
            for (int64 d = 0; d < s.dr; ++d) {
              AddLanes(d_rk + (w * s.dr + d) * I + i, SumOf(s.h, [&](int64 h) {
                         return heads[h].kp[w * s.dr + d] *
                                LoadLanes(&d_logits[(h * W + w) * I + i]);
                       }));
            }
          }
        }
      }
    });
    // Sum the parts' table gradients and put them back in [I, W, D] order.
    for (int64 part = 1; part < parts; ++part) {
      const float* source = accumulators.data() + part * table_size;
      for (int64 index = 0; index < table_size; ++index) accumulators[index] += source[index];
    }
    const float* sums = accumulators.data();
    const std::pair<int, int64> table_outputs[] = {{3, s.dp}, {5, s.dr}, {7, s.dv}};
    for (const auto& [index, depth] : table_outputs) {
      float* out = grads[index]->flat<float>().data();
      for (int64 w = 0; w < W; ++w)
        for (int64 d = 0; d < depth; ++d)
          for (int64 i = 0; i < s.i; ++i)
            out[(i * W + w) * depth + d] = sums[(w * depth + d) * I + i];
      sums += W * depth * I;
    }
  }
};

using ::tensorflow::InitOnStartupMarker;
using ::tensorflow::register_op::OpDefBuilderWrapper;

// The eight operands, in the order of the module comment (both ops start with them).
OpDefBuilderWrapper& WithOperands(OpDefBuilderWrapper&& builder) {
  return builder.Input("query_content: float")
      .Input("key_content: float")
      .Input("query_position: float")
      .Input("query_table: float")
      .Input("key_position: float")
      .Input("key_table: float")
      .Input("value: float")
      .Input("value_table: float");
}

// As REGISTER_OP, whose builder chain cannot start with a function call.
const InitOnStartupMarker forward_registration =
    InitOnStartupMarker{} << WithOperands(OpDefBuilderWrapper("DeeplabAxialAttentionForward"))
    .Output("content: float")
    .Output("position: float")
    .Output("log_normalizer: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle query, value, out;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &query));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(6), 4, &value));
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
    .Output("d_query_content: float")
    .Output("d_key_content: float")
    .Output("d_query_position: float")
    .Output("d_query_table: float")
    .Output("d_key_position: float")
    .Output("d_key_table: float")
    .Output("d_value: float")
    .Output("d_value_table: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int index = 0; index < 8; ++index) c->set_output(index, c->input(index));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialAttentionForward").Device(::tensorflow::DEVICE_CPU), ForwardOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialAttentionBackward").Device(::tensorflow::DEVICE_CPU), BackwardOp);

}  // namespace
}  // namespace deeplab_axial
