// Laplacian-pyramid loss and the distillation loss, each in one fused sweep per
// image plane. Both losses are functions of a difference (the pyramid is
// linear, so L_i(x) - L_i(y) = L_i(x - y)): each plane reads x and y once,
// builds the pyramid of x - y in a per-thread workspace (levels are a quarter of
// the previous, all in L1/L2 at training patch sizes), sums each level's |L_i|,
// and, when asked, runs the gradient back down the pyramid in the same call,
// writing d loss / d x (the one full-size output; d loss / d y is its negation).
// Nothing else full-size is written. Accumulation in fp32 (fp64 for fp64).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "binomial.h"
#include "elementwise.h"

namespace cdism_fast::cpu {
namespace {

using binomial::AxisOp;
using binomial::Kind;
using binomial::PlaneRows;
using binomial::sign;

// Level sizes and the 1-D operators between consecutive levels, for planes
// padded to (height, width); built once per call and shared by all threads.
template <typename T>
struct PyramidPlan {
  int64_t levels;
  std::vector<int64_t> rows, cols, offset;  // per level; offset into a plane's level buffer
  std::vector<T> weight;                    // per level: 2^l, divided by the element count for "mean"
  // Per step l -> l + 1: blur-pool and expand (across = within rows, down = across rows), and adjoints.
  using Ops = std::vector<std::shared_ptr<const AxisOp<T>>>;
  Ops pool_across, pool_down, expand_across, expand_down;
  Ops pool_across_t, pool_down_t, expand_across_t, expand_down_t;

  PyramidPlan(int64_t levels_, int64_t height, int64_t width, int64_t planes, bool mean) : levels(levels_) {
    int64_t total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      rows.push_back(height >> l);
      cols.push_back(width >> l);
      offset.push_back(total);
      total += rows[l] * cols[l];
      const double count = mean ? static_cast<double>(planes) * rows[l] * cols[l] : 1.0;
      weight.push_back(static_cast<T>(std::ldexp(1.0, static_cast<int>(l)) / count));
    }
    offset.push_back(total);
    for (int64_t l = 0; l + 1 < levels; ++l) {
      pool_across.push_back(binomial::axis_op<T>(Kind::kBlurPool, false, cols[l]));
      pool_down.push_back(binomial::axis_op<T>(Kind::kBlurPool, false, rows[l]));
      expand_across.push_back(binomial::axis_op<T>(Kind::kExpand, false, cols[l + 1]));
      expand_down.push_back(binomial::axis_op<T>(Kind::kExpand, false, rows[l + 1]));
      pool_across_t.push_back(binomial::axis_op<T>(Kind::kBlurPool, true, cols[l]));
      pool_down_t.push_back(binomial::axis_op<T>(Kind::kBlurPool, true, rows[l]));
      expand_across_t.push_back(binomial::axis_op<T>(Kind::kExpand, true, cols[l + 1]));
      expand_down_t.push_back(binomial::axis_op<T>(Kind::kExpand, true, rows[l + 1]));
    }
  }

  int64_t plane_size() const { return offset[levels]; }
};

// Per-thread buffers, sized on first use and reused across planes.
template <typename T>
struct Workspace {
  std::vector<T> level;    // g_0, g_1, ... (then the gradients with respect to them)
  std::vector<T> sign;     // weight_l * sign(L_l), per level (only with a gradient)
  std::vector<T> scratch;  // for binomial::separable_rows
};

// The pyramid of the plane in ws.level (level 0 filled by the caller): adds each
// level's sum of |L_l| to sums[l]. With with_grad, level 0 then holds the
// gradient of sum_l weight_l * sum |L_l| with respect to level 0.
template <typename T>
void pyramid_plane(const PyramidPlan<T>& plan, Workspace<T>& ws, double* sums, bool with_grad) {
  T* g = ws.level.data();
  T* s = ws.sign.data();
  const int64_t last = plan.levels - 1;
  for (int64_t l = 0; l < last; ++l) {
    const int64_t cols = plan.cols[l], cols_next = plan.cols[l + 1];
    T* fine = g + plan.offset[l];
    T* coarse = g + plan.offset[l + 1];
    T* fine_sign = s + plan.offset[l];
    const T w = plan.weight[l];
    // g_{l+1} = avg_pool(blur(g_l)).
    binomial::separable_rows(
        *plan.pool_across[l], *plan.pool_down[l], 0, plan.rows[l + 1],
        [&](int64_t r, T*) { return fine + r * cols; },
        [&](int64_t r, const T* row) { std::copy_n(row, cols_next, coarse + r * cols_next); }, ws.scratch);
    // L_l = g_l - expand(g_{l+1}), reduced as it is produced.
    double level_sum = 0;
    binomial::separable_rows(
        *plan.expand_across[l], *plan.expand_down[l], 0, plan.rows[l],
        [&](int64_t r, T*) { return coarse + r * cols_next; },
        [&](int64_t r, const T* expanded) {
          level_sum += binomial::abs_sum(fine + r * cols, expanded, with_grad ? fine_sign + r * cols : nullptr, w,
                                         cols);
        },
        ws.scratch);
    sums[l] += level_sum;
  }
  T* top = g + plan.offset[last];
  const int64_t top_size = plan.rows[last] * plan.cols[last];
  double top_sum = 0;  // row by row, as the other levels, to keep fp32 sums short
  for (int64_t r = 0; r < plan.rows[last]; ++r) {
    top_sum += binomial::abs_sum<T>(top + r * plan.cols[last], nullptr, nullptr, 0, plan.cols[last]);
  }
  sums[last] += top_sum;
  if (!with_grad) return;

  // Backward, coarse to fine: G_last = w sign(g_last);
  // G_l = s_l + (pool blur)^T (G_{l+1} - expand^T s_l), with s_l = w_l sign(L_l).
  for (int64_t i = 0; i < top_size; ++i) top[i] = plan.weight[last] * sign(top[i]);
  for (int64_t l = last - 1; l >= 0; --l) {
    const int64_t cols = plan.cols[l], cols_next = plan.cols[l + 1];
    T* fine = g + plan.offset[l];
    T* coarse = g + plan.offset[l + 1];
    const T* fine_sign = s + plan.offset[l];
    binomial::separable_rows(
        *plan.expand_across_t[l], *plan.expand_down_t[l], 0, plan.rows[l + 1],
        [&](int64_t r, T*) { return fine_sign + r * cols; },
        [&](int64_t r, const T* pulled) {
          binomial::difference(coarse + r * cols_next, pulled, coarse + r * cols_next, cols_next);
        },
        ws.scratch);
    binomial::separable_rows(
        *plan.pool_across_t[l], *plan.pool_down_t[l], 0, plan.rows[l],
        [&](int64_t r, T*) { return coarse + r * cols_next; },
        [&](int64_t r, const T* spread) { binomial::sum(spread, fine_sign + r * cols, fine + r * cols, cols); },
        ws.scratch);
  }
}

// Fills the padded (rows x cols) level 0 from an height x width image given row
// by row by load(r, row), reflecting rows and columns past the bottom and right.
template <typename T, typename Load>
void fill_padded(T* dst, int64_t height, int64_t width, int64_t rows, int64_t cols, Load&& load) {
  for (int64_t r = 0; r < height; ++r) {
    T* row = dst + r * cols;
    load(r, row);
    for (int64_t c = width; c < cols; ++c) row[c] = row[2 * (width - 1) - c];
  }
  for (int64_t r = height; r < rows; ++r) std::copy_n(dst + (2 * (height - 1) - r) * cols, cols, dst + r * cols);
}

// The adjoint of fill_padded's reflection, in place: afterwards the top-left
// height x width block (row stride cols) is the gradient of the unpadded image.
template <typename T>
void fold_padding(T* g, int64_t height, int64_t width, int64_t rows, int64_t cols) {
  for (int64_t r = height; r < rows; ++r) {
    T* src = g + r * cols;
    T* dst = g + (2 * (height - 1) - r) * cols;
    for (int64_t c = 0; c < cols; ++c) dst[c] += src[c];
  }
  for (int64_t r = 0; r < height; ++r) {
    T* row = g + r * cols;
    for (int64_t c = width; c < cols; ++c) row[2 * (width - 1) - c] += row[c];
  }
}

int64_t padded(int64_t size, int64_t levels) {
  const int64_t multiple = int64_t{1} << (levels - 1);
  return (size + multiple - 1) / multiple * multiple;
}

void check_inputs(const char* name, const at::Tensor& x, const at::Tensor& y, int64_t levels) {
  TORCH_CHECK(x.dim() == 4, name, ": expected NCHW tensors, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.sizes() == y.sizes(), name, ": inputs differ in shape");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), name, ": inputs differ in dtype");
  TORCH_CHECK(levels >= 1 && levels <= 30, name, ": levels must be in [1, 30], got ", levels);
  if (levels > 1) {
    const int64_t min_size = (int64_t{1} << (levels - 1)) + 1;
    TORCH_CHECK(x.size(2) >= min_size && x.size(3) >= min_size, name, ": ", levels, " levels need at least ",
                min_size, "x", min_size, " pixels, got ", x.size(2), "x", x.size(3));
  }
}

std::tuple<at::Tensor, at::Tensor> make_outputs(const at::Tensor& x, bool with_grad) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = with_grad ? at::empty_like(x, x.options().dtype(acc)) : at::empty({0}, x.options().dtype(acc));
  return {at::empty({}, x.options().dtype(acc)), grad};
}

// sum_l weight_l * sums[plane][l], summed in a fixed order (deterministic).
template <typename T>
double weighted_total(const PyramidPlan<T>& plan, const std::vector<double>& sums) {
  double total = 0;
  for (int64_t l = 0; l < plan.levels; ++l) {
    double level = 0;
    for (size_t p = l; p < sums.size(); p += plan.levels) level += sums[p];
    total += static_cast<double>(plan.weight[l]) * level;
  }
  return total;
}

// The loss (sum over planes and levels) of x against y; with_grad: d loss / d x into grad.
template <typename scalar_t>
double laplacian_planes(const at::Tensor& x, const at::Tensor& y, int64_t levels, bool mean, bool with_grad,
                        at::Tensor& grad) {
  using T = acc_t<scalar_t>;
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  const int64_t rows = padded(height, levels), cols = padded(width, levels);
  const PyramidPlan<T> plan(levels, rows, cols, planes, mean);
  std::vector<double> sums(planes * levels, 0.0);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws;
    ws.level.resize(plan.plane_size());
    if (with_grad) ws.sign.resize(plan.plane_size());
    std::vector<T> x_buffer(width), y_buffer(width);
    for (int64_t p = begin; p < end; ++p) {
      const auto xs = PlaneRows<scalar_t>::reader(x, p), ys = PlaneRows<scalar_t>::reader(y, p);
      fill_padded(ws.level.data(), height, width, rows, cols, [&](int64_t r, T* row) {
        const T* xr = xs.load(r, x_buffer.data());
        binomial::difference(xr, ys.load(r, y_buffer.data()), row, width);
      });
      pyramid_plane(plan, ws, &sums[p * levels], with_grad);
      if (!with_grad) continue;
      fold_padding(ws.level.data(), height, width, rows, cols);
      const auto out = PlaneRows<T>::writer(grad, p);
      for (int64_t r = 0; r < height; ++r) out.store(r, ws.level.data() + r * cols);
    }
  });
  return weighted_total(plan, sums);
}

std::tuple<at::Tensor, at::Tensor> laplacian_loss(const at::Tensor& x, const at::Tensor& y, int64_t levels,
                                                  bool mean, bool with_grad) {
  check_inputs("laplacian_loss", x, y, levels);
  at::Tensor loss, grad;
  std::tie(loss, grad) = make_outputs(x, with_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "laplacian_loss",
                                  [&] { loss.fill_(laplacian_planes<scalar_t>(x, y, levels, mean, with_grad, grad)); });
  return {loss, grad};
}

// alpha * L_stu(student, gt) + laplacian(student - teacher) + laplacian(HF(student - teacher)),
// HF = I - blur being linear too; L_stu is L1 or, with charbonnier, Charbonnier of epsilon eps;
// with_grad: d loss / d student into grad.
template <typename scalar_t>
double distillation_planes(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& gt,
                           double alpha, bool charbonnier, double eps, int64_t levels, bool mean,
                           bool with_grad, at::Tensor& grad) {
  using T = acc_t<scalar_t>;
  const int64_t planes = student.size(0) * student.size(1), height = student.size(2), width = student.size(3);
  const int64_t rows = padded(height, levels), cols = padded(width, levels);
  const PyramidPlan<T> plan(levels, rows, cols, planes, mean);
  const auto blur_across = binomial::axis_op<T>(Kind::kBlur, false, width);
  const auto blur_down = binomial::axis_op<T>(Kind::kBlur, false, height);
  const auto blur_across_t = binomial::axis_op<T>(Kind::kBlur, true, width);
  const auto blur_down_t = binomial::axis_op<T>(Kind::kBlur, true, height);
  const T eps2 = static_cast<T>(eps * eps);
  const double numel = static_cast<double>(planes) * height * width;
  const T student_weight = static_cast<T>(alpha / (mean ? numel : 1.0));
  std::vector<double> sums(planes * levels, 0.0), student_sums(planes, 0.0);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws;
    ws.level.resize(plan.plane_size());
    if (with_grad) ws.sign.resize(plan.plane_size());
    std::vector<T> diff(height * width), high(height * width), total(with_grad ? height * width : 0);
    std::vector<T> s_buffer(width), t_buffer(width), g_buffer(width);
    // One pyramid of an unpadded plane (both pyramids share their weights, so their
    // sums add up level by level); with a gradient, it is left in ws.level (row stride cols).
    const auto pyramid_of = [&](const T* image, int64_t p) {
      fill_padded(ws.level.data(), height, width, rows, cols,
                  [&](int64_t r, T* row) { std::copy_n(image + r * width, width, row); });
      pyramid_plane(plan, ws, &sums[p * levels], with_grad);
      if (with_grad) fold_padding(ws.level.data(), height, width, rows, cols);
    };
    for (int64_t p = begin; p < end; ++p) {
      const auto ss = PlaneRows<scalar_t>::reader(student, p), ts = PlaneRows<scalar_t>::reader(teacher, p);
      const auto gs = PlaneRows<scalar_t>::reader(gt, p);
      // The student term (and its gradient, which starts `total`) and d = student - teacher.
      double student_sum = 0;
      for (int64_t r = 0; r < height; ++r) {
        const T* sr = ss.load(r, s_buffer.data());
        const T* gr = gs.load(r, g_buffer.data());
        const T* tr = ts.load(r, t_buffer.data());
        T* tg = with_grad ? total.data() + r * width : nullptr;
        T acc = 0;
        if (charbonnier) {
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < width; ++c) {
            const T e = sr[c] - gr[c], value = std::sqrt(e * e + eps2);
            acc += value;
            if (tg) tg[c] = student_weight * e / value;
          }
        } else {
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < width; ++c) {
            const T e = sr[c] - gr[c];
            acc += std::abs(e);
            if (tg) tg[c] = student_weight * sign(e);
          }
        }
        student_sum += acc;
        binomial::difference(sr, tr, diff.data() + r * width, width);
      }
      student_sums[p] = student_sum;
      pyramid_of(diff.data(), p);
      if (with_grad) {
        for (int64_t r = 0; r < height; ++r) {
          T* t = total.data() + r * width;
          binomial::sum(t, ws.level.data() + r * cols, t, width);
        }
      }
      binomial::separable_rows(
          *blur_across, *blur_down, 0, height,
          [&](int64_t r, T*) { return diff.data() + r * width; },
          [&](int64_t r, const T* blurred) {
            binomial::difference(diff.data() + r * width, blurred, high.data() + r * width, width);
          },
          ws.scratch);
      pyramid_of(high.data(), p);
      if (!with_grad) continue;
      // Through HF^T = I - blur^T.
      binomial::separable_rows(
          *blur_across_t, *blur_down_t, 0, height,
          [&](int64_t r, T*) { return ws.level.data() + r * cols; },
          [&](int64_t r, const T* blurred) {
            binomial::add_difference(total.data() + r * width, ws.level.data() + r * cols, blurred, width);
          },
          ws.scratch);
      const auto out = PlaneRows<T>::writer(grad, p);
      for (int64_t r = 0; r < height; ++r) out.store(r, total.data() + r * width);
    }
  });
  double student_total = 0;
  for (double v : student_sums) student_total += v;
  return alpha * student_total / (mean ? numel : 1.0) + weighted_total(plan, sums);
}

std::tuple<at::Tensor, at::Tensor> distillation_loss(const at::Tensor& student, const at::Tensor& teacher,
                                                     const at::Tensor& gt, double alpha, bool charbonnier,
                                                     double eps, int64_t levels, bool mean, bool with_grad) {
  check_inputs("distillation_loss", student, teacher, levels);
  check_inputs("distillation_loss", student, gt, levels);
  TORCH_CHECK(student.size(2) >= 3 && student.size(3) >= 3,
              "distillation_loss: the high-pass filter needs at least 3x3 pixels");
  at::Tensor loss, grad;
  std::tie(loss, grad) = make_outputs(student, with_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "distillation_loss", [&] {
    loss.fill_(distillation_planes<scalar_t>(student, teacher, gt, alpha, charbonnier, eps, levels, mean, with_grad,
                                             grad));
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(cdism_fast, CPU, m) {
  m.impl("laplacian_loss", &laplacian_loss);
  m.impl("distillation_loss", &distillation_loss);
}

}  // namespace cdism_fast::cpu
