// Training-mode batch norms of axial attention, fused with the copies around them (CPU).
//
// * DeeplabAxialBatchNormSplit normalizes the qkv projection x [..., H, D] per channel
//   (h, d) and writes each head's channels straight into the parts q, k and v
//   [..., H, depths[t]]. With TF ops that was FusedBatchNormV3 and then SplitV, whose
//   copies of 4-16 floats per head took about as long as the norm itself, and SplitV's
//   gradient, a ConcatV2 (together ~5% of Axial-ResNet-S's training step at 224²).
// * DeeplabAxialNormalizedSum normalizes each of T terms [..., C] per channel with its
//   own statistics, gamma and beta, and sums them: the output batch norm of the content
//   and position retrievals. TF ops: one FusedBatchNormV3 per term and an AddV2, several
//   passes over every term each; here one pass reads the terms for their statistics and
//   one writes the sum, and the gradient reads the shared upstream gradient once for
//   every term.
//
// With `swap_rows`, the rows of x (of the terms) [outer, A, B] come out as [outer, B, A]:
// a height-axis attention layer's sequences are the image's columns, and its qkv split
// writes them column-major (and its output sum row-major again) instead of the layer
// transposing its input and its output (two more copies and their gradients).
//
// Statistics are per channel over all rows M (every axis but the channel ones), as
// FusedBatchNormV3 computes them: mean and biased variance, normalizing by
// rsqrt(variance + epsilon). They are sums of x - x[row 0] (a shift that keeps the
// variance from cancelling when the mean is large next to the spread), in float over
// blocks of rows and in double across blocks and across the fixed parts of the rows that
// the threads take, added in part order: the same result on every run.
//
// With dy the upstream gradient of one term's normalized output y = gamma x_hat + beta,
// x_hat = (x - mean) / sigma:
//   d_beta = sum dy,  d_gamma = sum dy x_hat,
//   dx = gamma / sigma (dy - d_beta / M - x_hat d_gamma / M).

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "common.h"

namespace deeplab_axial {
namespace {

using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpOutputList;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Rows per block of float sums before they are added to the double ones.
constexpr int64 kBlockRows = 64;

// The same row of T terms [M, C] (each contiguous) loaded into `row` [T, Cp]: C floats
// per term, then zeros up to Cp = C padded to kLanes, so that every loop below runs on
// whole vectors.
struct Rows {
  std::vector<const float*> terms;
  int64 count, channels, padded;
  Rows(std::vector<const float*> data, int64 rows, int64 channels_per_row)
      : terms(std::move(data)), count(rows), channels(channels_per_row),
        padded(PadToLanes(channels_per_row)) {}
  int64 Width() const { return static_cast<int64>(terms.size()) * padded; }
  void Load(int64 r, float* row) const {
    for (size_t t = 0; t < terms.size(); ++t) {
      std::memcpy(row + t * padded, terms[t] + r * channels, channels * sizeof(float));
    }
  }
};

// sums[c] = sum over rows r of what add(r, scratch, block) adds to block[c] (c < columns),
// each call given a `scratch` row of `scratch_size` floats: float within blocks of
// kBlockRows rows, double across blocks and parts (fixed, added in order).
template <typename Add>
std::vector<double> SumOverRows(OpKernelContext* context, int64 rows, int64 columns,
                                int64 scratch_size, Add add) {
  const int64 parts = NumParts(context, rows);
  std::vector<double> partial(parts * columns, 0.0);
  ParallelParts(context, rows, parts, [&](int64 part, int64 first, int64 last) {
    Buffer block(columns, 0.0f), scratch(scratch_size, 0.0f);
    double* total = partial.data() + part * columns;
    for (int64 start = first; start < last; start += kBlockRows) {
      std::fill(block.begin(), block.end(), 0.0f);
      for (int64 r = start; r < std::min(last, start + kBlockRows); ++r) {
        add(r, scratch.data(), block.data());
      }
      for (int64 c = 0; c < columns; ++c) total[c] += block[c];
    }
  });
  std::vector<double> sums(columns, 0.0);
  for (int64 part = 0; part < parts; ++part)
    for (int64 c = 0; c < columns; ++c) sums[c] += partial[part * columns + c];
  return sums;
}

// Mean and biased variance [T, Cp] of every channel of the terms over their rows.
void Moments(OpKernelContext* context, const Rows& x, Buffer* mean, Buffer* variance) {
  const int64 width = x.Width();
  Buffer shift(width, 0.0f);
  if (x.count > 0) x.Load(0, shift.data());
  const std::vector<double> sums =
      SumOverRows(context, x.count, 2 * width, width, [&](int64 r, float* row, float* block) {
        x.Load(r, row);
        for (int64 c = 0; c < width; c += kLanes) {
          const Vec centred = LoadLanes(row + c) - LoadLanes(&shift[c]);
          AddLanes(block + c, centred);
          AddLanes(block + width + c, centred * centred);
        }
      });
  mean->assign(width, 0.0f);
  variance->assign(width, 0.0f);
  if (x.count == 0) return;
  for (int64 c = 0; c < width; ++c) {
    const double shifted_mean = sums[c] / x.count;
    (*mean)[c] = static_cast<float>(shift[c] + shifted_mean);
    (*variance)[c] = static_cast<float>(
        std::max(0.0, sums[width + c] / x.count - shifted_mean * shifted_mean));
  }
}

// Per channel of T terms [T, Cp], y = scale x + offset: the normalization of the batch
// statistics with gamma and beta.
struct Affine {
  Buffer scale, offset;
  Affine(const Buffer& mean, const Buffer& variance, const float* gamma, const float* beta,
         const Rows& x, float epsilon)
      : scale(x.Width(), 0.0f), offset(x.Width(), 0.0f) {
    for (size_t t = 0; t < x.terms.size(); ++t) {
      for (int64 c = 0; c < x.channels; ++c) {
        const int64 at = t * x.padded + c;
        scale[at] = gamma[t * x.channels + c] / std::sqrt(variance[at] + epsilon);
        offset[at] = beta[t * x.channels + c] - mean[at] * scale[at];
      }
    }
  }
};

// The gradient of T normalized terms with respect to the terms, per channel
// dx = a dy + b x + c (module comment), with d_gamma and d_beta [T, Cp].
struct NormGradient {
  Buffer a, b, c, d_gamma, d_beta;
  NormGradient(const Buffer& mean, const Buffer& variance, const float* gamma,
               const std::vector<double>& dy_sums, const std::vector<double>& dy_x_sums,
               const Rows& x, float epsilon)
      : a(x.Width(), 0.0f), b(x.Width(), 0.0f), c(x.Width(), 0.0f),
        d_gamma(x.Width(), 0.0f), d_beta(x.Width(), 0.0f) {
    const double rows = static_cast<double>(std::max<int64>(x.count, 1));
    for (size_t t = 0; t < x.terms.size(); ++t) {
      for (int64 channel = 0; channel < x.channels; ++channel) {
        const int64 at = t * x.padded + channel;
        const double inverse_sigma = 1.0 / std::sqrt(double{variance[at]} + epsilon);
        const double g = gamma[t * x.channels + channel];
        d_beta[at] = static_cast<float>(dy_sums[at]);
        d_gamma[at] = static_cast<float>(dy_x_sums[at] * inverse_sigma);
        const double slope = -g * inverse_sigma * inverse_sigma * d_gamma[at] / rows;
        a[at] = static_cast<float>(g * inverse_sigma);
        b[at] = static_cast<float>(slope);
        c[at] = static_cast<float>(-g * inverse_sigma * dy_sums[at] / rows - slope * mean[at]);
      }
    }
  }
  // x[0 .. Cp) <- dx of the term whose channels start at `offset` in [T, Cp], from its
  // row x and dy.
  void Apply(int64 offset, const float* dy, float* x, int64 padded) const {
    for (int64 channel = 0; channel < padded; channel += kLanes) {
      const int64 at = offset + channel;
      StoreLanes(x + channel, LoadLanes(&a[at]) * LoadLanes(dy + channel) +
                                  LoadLanes(&b[at]) * LoadLanes(x + channel) +
                                  LoadLanes(&c[at]));
    }
  }
};

// values [T, C] -> [T, Cp], zeros past C: per-channel inputs in the rows' layout.
Buffer LoadTerms(const float* values, const Rows& x) {
  Buffer padded(x.Width(), 0.0f);
  for (size_t t = 0; t < x.terms.size(); ++t) {
    std::copy_n(values + t * x.channels, x.channels, padded.begin() + t * x.padded);
  }
  return padded;
}

// Writes the first `channels` of each term's entries of `padded_values` [T, Cp] to
// out[t] [T, C].
void StoreTerms(const Buffer& padded_values, const Rows& x, float* out) {
  for (size_t t = 0; t < x.terms.size(); ++t) {
    std::copy(padded_values.begin() + t * x.padded,
              padded_values.begin() + t * x.padded + x.channels, out + t * x.channels);
  }
}

// Where row r of [outer, first, second] goes in [outer, second, first] (with `swap`;
// else it stays).
struct RowOrder {
  bool swap = false;
  int64 first = 1, second = 1;
  int64 operator()(int64 r) const {
    if (!swap) return r;
    const int64 block = first * second, within = r % block;
    return r - within + (within % second) * first + within / second;
  }
  // Takes `first` and `second` from axes 1 and 2 of the input's shape (with swap).
  void Read(const TensorShape& shape) {
    if (!swap) return;
    first = shape.dim_size(1);
    second = shape.dim_size(2);
  }
  // The input's shape [outer, first, second, ...] -> the output's (axes 1 and 2
  // exchanged with swap).
  TensorShape Moved(TensorShape shape) const {
    if (swap) {
      const int64 axis_one = shape.dim_size(1);
      shape.set_dim(1, shape.dim_size(2));
      shape.set_dim(2, axis_one);
    }
    return shape;
  }
};

// The per-head parts of a row [H, D]: part t holds channels offset[t] ... + depth[t] of
// every head.
struct HeadParts {
  std::vector<int64> depths, offsets;
  int64 heads = 0, depth = 0;
  explicit HeadParts(const std::vector<int32_t>& part_depths) {
    for (int32_t d : part_depths) {
      offsets.push_back(depth);
      depths.push_back(d);
      depth += d;
    }
  }
  // row [H, D] -> part t's row [H, depths[t]] at parts[t] + r * H * depths[t].
  void Split(const float* row, int64 r, const std::vector<float*>& parts) const {
    for (size_t t = 0; t < depths.size(); ++t) {
      float* to = parts[t] + r * heads * depths[t];
      for (int64 h = 0; h < heads; ++h) {
        CopyFloats(row + h * depth + offsets[t], depths[t], to + h * depths[t]);
      }
    }
  }
  void Join(const std::vector<const float*>& parts, int64 r, float* row) const {
    for (size_t t = 0; t < depths.size(); ++t) {
      const float* from = parts[t] + r * heads * depths[t];
      for (int64 h = 0; h < heads; ++h) {
        CopyFloats(from + h * depths[t], depths[t], row + h * depth + offsets[t]);
      }
    }
  }
};

// Cycles (roughly) per row of C channels for the thread pool's work split.
int64 RowCost(int64 width) { return 4 * width; }

class SplitOpBase : public OpKernel {
 public:
  explicit SplitOpBase(OpKernelConstruction* context) : OpKernel(context) {
    std::vector<int32_t> depths;
    OP_REQUIRES_OK(context, context->GetAttr("depths", &depths));
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("swap_rows", &order_.swap));
    for (int32_t d : depths) {
      OP_REQUIRES(context, d > 0,
                  InvalidArgument("batch norm split: every part depth must be positive"));
    }
    parts_ = HeadParts(depths);
  }

 protected:
  // What one call's x says: rows M, channels C = H * D, the parts with x's head count
  // and the parts' row order (copies: Compute may run on several threads at once).
  struct Call {
    int64 rows = 0, channels = 0;
    HeadParts heads{std::vector<int32_t>{}};
    RowOrder order;
  };

  // Checks x [..., H, D] ([outer, A, B, H, D] with swap_rows) against the parts and
  // gamma, beta (or mean, variance) [H * D].
  bool ReadShapes(OpKernelContext* context, Call* call) {
    const Tensor& x = context->input(0);
    if (x.dims() < 2 || x.dim_size(x.dims() - 1) != parts_.depth ||
        (order_.swap && x.dims() != 5)) {
      context->CtxFailure(InvalidArgument(
          "batch norm split: x must be [", order_.swap ? "outer, A, B" : "...",
          ", heads, ", parts_.depth, "] (the part depths' sum), got ",
          x.shape().DebugString()));
      return false;
    }
    call->order = order_;
    call->order.Read(x.shape());
    call->heads = parts_;
    call->heads.heads = x.dim_size(x.dims() - 2);
    const int64 channels = call->heads.heads * call->heads.depth;
    for (int index : {1, 2}) {
      if (context->input(index).shape() != TensorShape({channels})) {
        context->CtxFailure(InvalidArgument(
            "batch norm split: input ", index, " must be [", channels, "] (heads x depth), got ",
            context->input(index).shape().DebugString()));
        return false;
      }
    }
    call->channels = channels;
    call->rows = channels == 0 ? 0 : x.NumElements() / channels;
    return true;
  }
  // x's shape with depth depths[t] ([outer, B, A, H, depths[t]] with swap_rows).
  TensorShape PartShape(const Tensor& x, int64 t) const {
    TensorShape shape = order_.Moved(x.shape());
    shape.set_dim(shape.dims() - 1, parts_.depths[t]);
    return shape;
  }

  HeadParts parts_{std::vector<int32_t>{}};
  RowOrder order_;
  float epsilon_;
};

class BatchNormSplitOp : public SplitOpBase {
 public:
  using SplitOpBase::SplitOpBase;

  void Compute(OpKernelContext* context) override {
    Call call;
    if (!ReadShapes(context, &call)) return;
    const Tensor& x_tensor = context->input(0);
    const int64 M = call.rows, C = call.channels;
    std::vector<float*> parts;
    OpOutputList outputs;
    OP_REQUIRES_OK(context, context->output_list("parts", &outputs));
    for (size_t t = 0; t < parts_.depths.size(); ++t) {
      Tensor* part;
      OP_REQUIRES_OK(context, outputs.allocate(t, PartShape(x_tensor, t), &part));
      parts.push_back(part->flat<float>().data());
    }
    Tensor *mean_out, *variance_out;
    OP_REQUIRES_OK(context, context->allocate_output("mean", TensorShape({C}), &mean_out));
    OP_REQUIRES_OK(context,
                   context->allocate_output("variance", TensorShape({C}), &variance_out));
    const Rows x({x_tensor.flat<float>().data()}, M, C);
    Buffer mean, variance;
    Moments(context, x, &mean, &variance);
    std::copy(mean.begin(), mean.begin() + C, mean_out->flat<float>().data());
    std::copy(variance.begin(), variance.begin() + C, variance_out->flat<float>().data());
    const Affine affine(mean, variance, context->input(1).flat<float>().data(),
                        context->input(2).flat<float>().data(), x, epsilon_);
    ParallelFor(context, M, RowCost(C), [&](int64 first, int64 last) {
      Buffer row(x.padded, 0.0f);
      for (int64 r = first; r < last; ++r) {
        x.Load(r, row.data());
        for (int64 c = 0; c < x.padded; c += kLanes) {
          StoreLanes(&row[c], LoadLanes(&row[c]) * LoadLanes(&affine.scale[c]) +
                                  LoadLanes(&affine.offset[c]));
        }
        call.heads.Split(row.data(), call.order(r), parts);
      }
    });
  }
};

class BatchNormSplitGradOp : public SplitOpBase {
 public:
  using SplitOpBase::SplitOpBase;

  // Inputs: x, gamma, mean, variance, d_parts...
  void Compute(OpKernelContext* context) override {
    Call call;
    if (!ReadShapes(context, &call)) return;
    const Tensor& x_tensor = context->input(0);
    const int64 M = call.rows, C = call.channels;
    OP_REQUIRES(context, context->input(3).shape() == TensorShape({C}),
                InvalidArgument("batch norm split: variance must be [", C, "], got ",
                                context->input(3).shape().DebugString()));
    OpInputList d_part_list;
    OP_REQUIRES_OK(context, context->input_list("d_parts", &d_part_list));
    std::vector<const float*> d_parts;
    for (size_t t = 0; t < parts_.depths.size(); ++t) {
      OP_REQUIRES(context, d_part_list[t].shape() == PartShape(x_tensor, t),
                  InvalidArgument("batch norm split: d_parts[", t, "] must be ",
                                  PartShape(x_tensor, t).DebugString(), ", got ",
                                  d_part_list[t].shape().DebugString()));
      d_parts.push_back(d_part_list[t].flat<float>().data());
    }
    Tensor *d_x_out, *d_gamma_out, *d_beta_out;
    OP_REQUIRES_OK(context, context->allocate_output(0, x_tensor.shape(), &d_x_out));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({C}), &d_gamma_out));
    OP_REQUIRES_OK(context, context->allocate_output(2, TensorShape({C}), &d_beta_out));
    const Rows x({x_tensor.flat<float>().data()}, M, C);
    const int64 Cp = x.padded;
    const Buffer mean = LoadTerms(context->input(2).flat<float>().data(), x);
    const Buffer variance = LoadTerms(context->input(3).flat<float>().data(), x);
    // Per channel: sum dy, then sum dy (x - mean).
    const std::vector<double> sums =
        SumOverRows(context, M, 2 * Cp, 2 * Cp, [&](int64 r, float* scratch, float* block) {
          float* dy = scratch + Cp;
          x.Load(r, scratch);
          call.heads.Join(d_parts, call.order(r), dy);
          for (int64 c = 0; c < Cp; c += kLanes) {
            const Vec d = LoadLanes(dy + c);
            AddLanes(block + c, d);
            AddLanes(block + Cp + c, d * (LoadLanes(scratch + c) - LoadLanes(&mean[c])));
          }
        });
    const NormGradient gradient(mean, variance, context->input(1).flat<float>().data(),
                                std::vector<double>(sums.begin(), sums.begin() + Cp),
                                std::vector<double>(sums.begin() + Cp, sums.end()), x,
                                epsilon_);
    std::copy_n(gradient.d_gamma.begin(), C, d_gamma_out->flat<float>().data());
    std::copy_n(gradient.d_beta.begin(), C, d_beta_out->flat<float>().data());
    float* d_x = d_x_out->flat<float>().data();
    ParallelFor(context, M, RowCost(2 * C), [&](int64 first, int64 last) {
      Buffer row(Cp, 0.0f), dy(Cp, 0.0f);
      for (int64 r = first; r < last; ++r) {
        x.Load(r, row.data());
        call.heads.Join(d_parts, call.order(r), dy.data());
        gradient.Apply(0, dy.data(), row.data(), Cp);
        std::copy_n(row.begin(), C, d_x + r * C);
      }
    });
  }
};

// Reads the T terms (input list "terms", equal shapes [..., C], [outer, B, A, C] when
// `order` swaps rows) and checks the [T, C] inputs at `per_channel` against them;
// returns their rows, channels and the row order of the sum.
bool ReadTerms(OpKernelContext* context, std::initializer_list<const char*> per_channel,
               std::vector<const float*>* terms, int64* rows, int64* channels,
               RowOrder* order) {
  OpInputList list;
  if (!context->input_list("terms", &list).ok() || list.size() == 0) {
    context->CtxFailure(InvalidArgument("normalized sum: expected at least one term"));
    return false;
  }
  const TensorShape& shape = list[0].shape();
  if (shape.dims() < 1 || (order->swap && shape.dims() != 4)) {
    context->CtxFailure(InvalidArgument("normalized sum: terms must be ",
                                        order->swap ? "[outer, B, A, channels]" : "[..., channels]",
                                        ", got shape ", shape.DebugString()));
    return false;
  }
  order->Read(shape);
  *channels = shape.dim_size(shape.dims() - 1);
  *rows = *channels == 0 ? 0 : shape.num_elements() / *channels;
  for (int t = 0; t < list.size(); ++t) {
    if (list[t].shape() != shape) {
      context->CtxFailure(InvalidArgument("normalized sum: every term must have shape ",
                                          shape.DebugString(), ", term ", t, " has ",
                                          list[t].shape().DebugString()));
      return false;
    }
    terms->push_back(list[t].flat<float>().data());
  }
  const TensorShape expected({list.size(), *channels});
  for (const char* name : per_channel) {
    const Tensor* tensor;
    if (!context->input(name, &tensor).ok() || tensor->shape() != expected) {
      context->CtxFailure(InvalidArgument("normalized sum: ", name, " must be ",
                                          expected.DebugString(), " (terms x channels)"));
      return false;
    }
  }
  return true;
}

const float* Input(OpKernelContext* context, const char* name) {
  const Tensor* tensor;
  TF_CHECK_OK(context->input(name, &tensor));
  return tensor->flat<float>().data();
}

class NormalizedSumOp : public OpKernel {
 public:
  explicit NormalizedSumOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("swap_rows", &order_.swap));
  }

  void Compute(OpKernelContext* context) override {
    std::vector<const float*> terms;
    int64 M, C;
    RowOrder order = order_;
    if (!ReadTerms(context, {"gamma", "beta"}, &terms, &M, &C, &order)) return;
    const int64 T = terms.size();
    Tensor *sum_out, *mean_out, *variance_out;
    OP_REQUIRES_OK(context, context->allocate_output(
                                "sum", order.Moved(context->input(0).shape()),
                                &sum_out));
    OP_REQUIRES_OK(context, context->allocate_output("mean", TensorShape({T, C}), &mean_out));
    OP_REQUIRES_OK(context,
                   context->allocate_output("variance", TensorShape({T, C}), &variance_out));
    const Rows x(terms, M, C);
    Buffer mean, variance;
    Moments(context, x, &mean, &variance);
    StoreTerms(mean, x, mean_out->flat<float>().data());
    StoreTerms(variance, x, variance_out->flat<float>().data());
    const Affine affine(mean, variance, Input(context, "gamma"), Input(context, "beta"), x,
                        epsilon_);
    const int64 Cp = x.padded;
    float* sum = sum_out->flat<float>().data();
    ParallelFor(context, M, RowCost(T * C), [&](int64 first, int64 last) {
      Buffer row(x.Width(), 0.0f), out(Cp, 0.0f);
      for (int64 r = first; r < last; ++r) {
        x.Load(r, row.data());
        for (int64 c = 0; c < Cp; c += kLanes) {
          Vec total = Zero();
          for (int64 t = 0; t < T; ++t) {
            const int64 at = t * Cp + c;
            total += LoadLanes(&row[at]) * LoadLanes(&affine.scale[at]) +
                     LoadLanes(&affine.offset[at]);
          }
          StoreLanes(&out[c], total);
        }
        std::copy_n(out.begin(), C, sum + order(r) * C);
      }
    });
  }

 private:
  RowOrder order_;
  float epsilon_;
};

class NormalizedSumGradOp : public OpKernel {
 public:
  explicit NormalizedSumGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(context, context->GetAttr("swap_rows", &order_.swap));
  }

  void Compute(OpKernelContext* context) override {
    std::vector<const float*> terms;
    int64 M, C;
    RowOrder order = order_;
    if (!ReadTerms(context, {"gamma", "mean", "variance"}, &terms, &M, &C, &order)) return;
    const int64 T = terms.size();
    const Tensor* d_sum_tensor;
    OP_REQUIRES_OK(context, context->input("d_sum", &d_sum_tensor));
    const TensorShape sum_shape = order.Moved(context->input(0).shape());
    OP_REQUIRES(context, d_sum_tensor->shape() == sum_shape,
                InvalidArgument("normalized sum: d_sum must have the sum's shape ",
                                sum_shape.DebugString(), ", got ",
                                d_sum_tensor->shape().DebugString()));
    OpOutputList d_terms_out;
    OP_REQUIRES_OK(context, context->output_list("d_terms", &d_terms_out));
    std::vector<float*> d_terms;
    for (int64 t = 0; t < T; ++t) {
      Tensor* d_term;
      OP_REQUIRES_OK(context, d_terms_out.allocate(t, context->input(0).shape(), &d_term));
      d_terms.push_back(d_term->flat<float>().data());
    }
    Tensor *d_gamma_out, *d_beta_out;
    OP_REQUIRES_OK(context,
                   context->allocate_output("d_gamma", TensorShape({T, C}), &d_gamma_out));
    OP_REQUIRES_OK(context,
                   context->allocate_output("d_beta", TensorShape({T, C}), &d_beta_out));
    const Rows x(terms, M, C);
    const Rows dy({d_sum_tensor->flat<float>().data()}, M, C);
    const int64 Cp = x.padded, width = x.Width();
    const Buffer mean = LoadTerms(Input(context, "mean"), x);
    const Buffer variance = LoadTerms(Input(context, "variance"), x);
    // Per channel: sum dy (the same for every term), then per term sum dy (x - mean).
    const std::vector<double> sums = SumOverRows(
        context, M, Cp + width, Cp + width, [&](int64 r, float* scratch, float* block) {
          float* row = scratch + Cp;
          dy.Load(order(r), scratch);
          x.Load(r, row);
          for (int64 c = 0; c < Cp; c += kLanes) {
            const Vec d = LoadLanes(scratch + c);
            AddLanes(block + c, d);
            for (int64 t = 0; t < T; ++t) {
              const int64 at = t * Cp + c;
              AddLanes(block + Cp + at, d * (LoadLanes(row + at) - LoadLanes(&mean[at])));
            }
          }
        });
    std::vector<double> dy_sums(width);
    for (int64 t = 0; t < T; ++t) std::copy_n(sums.begin(), Cp, dy_sums.begin() + t * Cp);
    const NormGradient gradient(mean, variance, Input(context, "gamma"), dy_sums,
                                std::vector<double>(sums.begin() + Cp, sums.end()), x,
                                epsilon_);
    StoreTerms(gradient.d_gamma, x, d_gamma_out->flat<float>().data());
    StoreTerms(gradient.d_beta, x, d_beta_out->flat<float>().data());
    ParallelFor(context, M, RowCost((T + 1) * C), [&](int64 first, int64 last) {
      Buffer row(width, 0.0f), d(Cp, 0.0f);
      for (int64 r = first; r < last; ++r) {
        dy.Load(order(r), d.data());
        x.Load(r, row.data());
        for (int64 t = 0; t < T; ++t) {
          gradient.Apply(t * Cp, d.data(), row.data() + t * Cp, Cp);
          std::copy_n(row.begin() + t * Cp, C, d_terms[t] + r * C);
        }
      }
    });
  }

 private:
  RowOrder order_;
  float epsilon_;
};

// Shape functions: the parts are x with their depths; the terms' gradients their shapes.
// RowOrder::Moved for the shape functions: with the `swap_rows` attribute, `shape` must
// have `rank` axes and comes back with axes 1 and 2 exchanged.
::tensorflow::Status MovedRows(InferenceContext* c, int rank, ShapeHandle* shape) {
  bool swap;
  TF_RETURN_IF_ERROR(c->GetAttr("swap_rows", &swap));
  if (!swap) return ::tensorflow::OkStatus();
  TF_RETURN_IF_ERROR(c->WithRank(*shape, rank, shape));
  const ShapeHandle input = *shape;
  TF_RETURN_IF_ERROR(c->ReplaceDim(input, 1, c->Dim(input, 2), shape));
  return c->ReplaceDim(*shape, 2, c->Dim(input, 1), shape);
}

::tensorflow::Status SplitShapes(InferenceContext* c) {
  std::vector<int32_t> depths;
  TF_RETURN_IF_ERROR(c->GetAttr("depths", &depths));
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &x));
  ShapeHandle moved = x;
  TF_RETURN_IF_ERROR(MovedRows(c, 5, &moved));
  for (size_t t = 0; t < depths.size(); ++t) {
    ShapeHandle part;
    TF_RETURN_IF_ERROR(c->ReplaceDim(moved, -1, c->MakeDim(depths[t]), &part));
    c->set_output(t, part);
  }
  DimensionHandle channels;
  TF_RETURN_IF_ERROR(c->Multiply(c->Dim(x, -2), c->Dim(x, -1), &channels));
  c->set_output(depths.size(), c->Vector(channels));
  c->set_output(depths.size() + 1, c->Vector(channels));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("DeeplabAxialBatchNormSplit")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("parts: num_parts * float")
    .Output("mean: float")
    .Output("variance: float")
    .Attr("num_parts: int >= 1")
    .Attr("depths: list(int)")
    .Attr("epsilon: float")
    .Attr("swap_rows: bool = false")
    .SetShapeFn(SplitShapes);

REGISTER_OP("DeeplabAxialBatchNormSplitGrad")
    .Input("x: float")
    .Input("gamma: float")
    .Input("mean: float")
    .Input("variance: float")
    .Input("d_parts: num_parts * float")
    .Output("d_x: float")
    .Output("d_gamma: float")
    .Output("d_beta: float")
    .Attr("num_parts: int >= 1")
    .Attr("depths: list(int)")
    .Attr("epsilon: float")
    .Attr("swap_rows: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(1));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("DeeplabAxialNormalizedSum")
    .Input("terms: num_terms * float")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("sum: float")
    .Output("mean: float")
    .Output("variance: float")
    .Attr("num_terms: int >= 1")
    .Attr("epsilon: float")
    .Attr("swap_rows: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle sum = c->input(0);
      TF_RETURN_IF_ERROR(MovedRows(c, 4, &sum));
      c->set_output(0, sum);
      c->set_output(1, c->input(c->num_inputs() - 2));
      c->set_output(2, c->input(c->num_inputs() - 2));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("DeeplabAxialNormalizedSumGrad")
    .Input("terms: num_terms * float")
    .Input("gamma: float")
    .Input("mean: float")
    .Input("variance: float")
    .Input("d_sum: float")
    .Output("d_terms: num_terms * float")
    .Output("d_gamma: float")
    .Output("d_beta: float")
    .Attr("num_terms: int >= 1")
    .Attr("epsilon: float")
    .Attr("swap_rows: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      int64_t terms;
      TF_RETURN_IF_ERROR(c->GetAttr("num_terms", &terms));
      for (int64_t t = 0; t < terms; ++t) c->set_output(t, c->input(t));
      c->set_output(terms, c->input(terms));
      c->set_output(terms + 1, c->input(terms));
      return ::tensorflow::OkStatus();
    });

REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialBatchNormSplit").Device(::tensorflow::DEVICE_CPU), BatchNormSplitOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialBatchNormSplitGrad").Device(::tensorflow::DEVICE_CPU),
    BatchNormSplitGradOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialNormalizedSum").Device(::tensorflow::DEVICE_CPU), NormalizedSumOp);
REGISTER_KERNEL_BUILDER(
    Name("DeeplabAxialNormalizedSumGrad").Device(::tensorflow::DEVICE_CPU),
    NormalizedSumGradOp);

}  // namespace
}  // namespace deeplab_axial
