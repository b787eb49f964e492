// Sparse VD's per-weight work of a training step on CPU, in one vectorized pass each way.
//
// The formulas of vdcore/functional.py's torch-operation path (still the path on GPUs and other dtypes):
// the forward gives the masked mean weight, the noise variance and the KL sum, and keeps two factors per weight
// for the backward, which then needs no transcendental function:
//   alpha (clipped), negated where log_alpha is clipped above (no gradient reaches log_sigma2 there);
//   d KL / d log_alpha over -K1 K3, negated where the weight is dropped from the mean (both are > 0).
// The KL is summed per fixed block of weights and then in block order: it does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

using at::vec::Vectorized;

// The KL approximation to the log-uniform prior (Molchanov et al. 2017, eq. 14); see functional.py.
constexpr double K1 = 0.63576, K2 = 1.87320, K3 = 1.48695;
constexpr double THETA2_EPS = 1e-16;
constexpr int64_t BLOCK = 8192;  // weights per task

template <typename T>
struct Constants {
  const Vectorized<T> zero{T(0)}, one{T(1)}, two{T(2)}, eps{T(THETA2_EPS)}, k2{T(K2)}, k3{T(K3)},
      c{T(0.5 / (K1 * K3))};
};

// How many factors 1 + e, e in [0, e^clip], multiply within T: one log is taken per that many weights.
template <typename T>
int64_t log_folds(double clip) {
  const double room = std::log(double(std::numeric_limits<T>::max())) / (clip + std::log1p(std::exp(-clip)));
  return std::clamp<int64_t>(int64_t(room), 1, 8);
}

template <typename T>
double sum_lanes(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  double sum = 0;
  for (T lane : lanes) sum += lane;
  return sum;
}

template <typename T>
double forward_block(const T* theta, const T* log_sigma2, T* mean, T* var, T* alpha_out, T* dkl_out, int64_t n,
                     double clip, double threshold, bool train_mask, int64_t folds) {
  constexpr int64_t W = Vectorized<T>::size();
  const Constants<T> k;
  const Vectorized<T> lo{T(-clip)}, hi{T(clip)}, thr{T(threshold)};
  // KL = K1 sum(sig) + 0.5 sum(log1p(e)), e = 1 / alpha. The logs are taken of products of `folds` factors
  // 1 + e, kept as product - 1 so that tiny e (dropped weights) are not lost to rounding near 1.
  Vectorized<T> sig_acc(T(0)), log_acc(T(0)), prod(T(0));
  int64_t in_prod = 0;
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min<int64_t>(W, n - i);
    const Vectorized<T> t = Vectorized<T>::loadu(theta + i, m);
    const Vectorized<T> a = t * t + k.eps;  // two roundings, as the reference: ties at the clip hold
    const Vectorized<T> u = Vectorized<T>::loadu(log_sigma2 + i, m) - a.log();
    const Vectorized<T> la = at::vec::clamp(u, lo, hi);
    const Vectorized<T> alpha = la.exp_u20();
    const Vectorized<T> keep = la <= thr;
    // sigmoid(-K2 - K3 la): the KL's K1 - K1 sigmoid(K2 + K3 la) without the cancellation.
    const Vectorized<T> sig = ((k.k2 + k.k3 * la).exp_u20() + k.one).reciprocal();
    const Vectorized<T> dkl = sig * (k.one - sig) + k.c / (k.one + alpha);
    (train_mask ? Vectorized<T>::blendv(k.zero, t, keep) : t).store(mean + i, m);
    (alpha * t * t).store(var + i, m);
    Vectorized<T>::blendv(alpha.neg(), alpha, u <= hi).store(alpha_out + i, m);
    (train_mask ? Vectorized<T>::blendv(dkl.neg(), dkl, keep) : dkl).store(dkl_out + i, m);
    Vectorized<T> s = sig, e = alpha.reciprocal();
    if (m < W) {  // lanes past the end hold padding, not weights
      const Vectorized<T> live = Vectorized<T>::set(k.zero, k.one, m) != k.zero;
      s = Vectorized<T>::blendv(k.zero, s, live);
      e = Vectorized<T>::blendv(k.zero, e, live);
    }
    sig_acc = sig_acc + s;
    prod = prod + e + prod * e;
    if (++in_prod == folds) {
      log_acc = log_acc + prod.log1p();
      prod = k.zero;
      in_prod = 0;
    }
  }
  log_acc = log_acc + prod.log1p();
  return K1 * sum_lanes(sig_acc) + 0.5 * sum_lanes(log_acc);
}

template <typename T>
void backward_block(const T* theta, const T* alpha_in, const T* dkl_in, const T* g_mean, const T* g_var,
                    std::optional<T> g_kl, T* g_theta, T* g_u, int64_t n) {
  constexpr int64_t W = Vectorized<T>::size();
  const Constants<T> k;
  const Vectorized<T> kl_scale(g_kl ? *g_kl * T(-K1 * K3) : T(0));
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min<int64_t>(W, n - i);
    const Vectorized<T> t = Vectorized<T>::loadu(theta + i, m);
    const Vectorized<T> signed_alpha = Vectorized<T>::loadu(alpha_in + i, m);
    const Vectorized<T> signed_dkl = Vectorized<T>::loadu(dkl_in + i, m);
    const Vectorized<T> alpha = signed_alpha.abs();
    Vectorized<T> gt = k.zero, gu = k.zero;
    if (g_mean) gt = Vectorized<T>::blendv(k.zero, Vectorized<T>::loadu(g_mean + i, m), signed_dkl > k.zero);
    if (g_var) {
      const Vectorized<T> gv = Vectorized<T>::loadu(g_var + i, m);
      const Vectorized<T> e2t = alpha * t;  // (d var / d theta at fixed log_alpha) / 2
      gt = gt + k.two * gv * e2t;
      gu = gv * (e2t * t);  // d var / d log_alpha = var
    }
    if (g_kl) gu = gu + kl_scale * signed_dkl.abs();
    gu = Vectorized<T>::blendv(k.zero, gu, signed_alpha > k.zero);
    gt = gt - k.two * gu * (t / (t * t + k.eps));  // d log_alpha / d theta = -2 theta / (theta^2 + eps)
    gt.store(g_theta + i, m);
    gu.store(g_u + i, m);
  }
}

void check_cpu_float(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu(), "vdcore weight stats: ", name, " must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), "vdcore weight stats: ", name, " must be floating point");
}

// (moments, kl, saved): moments (2, *shape) holds the mean and variance weights, saved (2, *shape) the
// backward's factors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> stats_forward(const at::Tensor& theta_in,
                                                             const at::Tensor& log_sigma2_in, double clip,
                                                             double threshold, bool train_mask) {
  check_cpu_float(theta_in, "theta");
  check_cpu_float(log_sigma2_in, "log_sigma2");
  TORCH_CHECK(theta_in.sizes() == log_sigma2_in.sizes() && theta_in.scalar_type() == log_sigma2_in.scalar_type(),
              "vdcore weight stats: theta and log_sigma2 differ in shape or dtype");
  const at::Tensor theta = theta_in.contiguous(), log_sigma2 = log_sigma2_in.contiguous();
  const int64_t n = theta.numel();
  std::vector<int64_t> shape{4};
  shape.insert(shape.end(), theta.sizes().begin(), theta.sizes().end());
  // One allocation: the moments and the saved factors live and die together.
  const at::Tensor buffer = at::empty(shape, theta.options());
  at::Tensor moments = buffer.narrow(0, 0, 2), saved = buffer.narrow(0, 2, 2);
  std::vector<double> partial((n + BLOCK - 1) / BLOCK, 0.0);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "vdcore_stats_forward", [&] {
    const int64_t folds = log_folds<scalar_t>(clip);
    const scalar_t* t = theta.const_data_ptr<scalar_t>();
    const scalar_t* s = log_sigma2.const_data_ptr<scalar_t>();
    scalar_t* mean = moments.mutable_data_ptr<scalar_t>();
    scalar_t* alpha = saved.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, int64_t(partial.size()), 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t i = b * BLOCK, m = std::min(BLOCK, n - i);
        partial[b] = forward_block<scalar_t>(t + i, s + i, mean + i, mean + n + i, alpha + i, alpha + n + i, m,
                                             clip, threshold, train_mask, folds);
      }
    });
  });
  double kl = 0;
  for (double p : partial) kl += p;
  return {moments, at::scalar_tensor(kl, theta.options()), saved};
}

// g_theta and g_log_sigma2 (written into the given contiguous tensors, which may be g_mean and g_var) from the
// gradients of the mean weight, the variance weight and the KL, any of which may be None.
void stats_backward(const at::Tensor& theta_in, const at::Tensor& saved, const std::optional<at::Tensor>& g_mean_in,
                    const std::optional<at::Tensor>& g_var_in, const std::optional<at::Tensor>& g_kl,
                    at::Tensor& g_theta, at::Tensor& g_u) {
  check_cpu_float(theta_in, "theta");
  TORCH_CHECK(saved.is_contiguous() && saved.numel() == 2 * theta_in.numel(),
              "vdcore weight stats: saved factors do not match theta");
  for (const at::Tensor* g : {&g_theta, &g_u}) {
    TORCH_CHECK(g->is_contiguous() && g->numel() == theta_in.numel() && g->scalar_type() == theta_in.scalar_type(),
                "vdcore weight stats: the gradient outputs must be contiguous, with theta's size and dtype");
  }
  for (const auto* g : {&g_mean_in, &g_var_in}) {
    TORCH_CHECK(!*g || ((*g)->numel() == theta_in.numel() && (*g)->scalar_type() == theta_in.scalar_type()),
                "vdcore weight stats: a gradient input differs from theta in size or dtype");
  }
  const at::Tensor theta = theta_in.contiguous();
  const at::Tensor g_mean = g_mean_in ? g_mean_in->contiguous() : at::Tensor();
  const at::Tensor g_var = g_var_in ? g_var_in->contiguous() : at::Tensor();
  const int64_t n = theta.numel();
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "vdcore_stats_backward", [&] {
    const scalar_t* t = theta.const_data_ptr<scalar_t>();
    const scalar_t* alpha = saved.const_data_ptr<scalar_t>();
    const scalar_t* gm = g_mean.defined() ? g_mean.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gv = g_var.defined() ? g_var.const_data_ptr<scalar_t>() : nullptr;
    std::optional<scalar_t> gk;
    if (g_kl) gk = g_kl->item<scalar_t>();
    scalar_t* out_t = g_theta.mutable_data_ptr<scalar_t>();
    scalar_t* out_u = g_u.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, BLOCK, [&](int64_t i0, int64_t i1) {
      backward_block<scalar_t>(t + i0, alpha + i0, alpha + n + i0, gm ? gm + i0 : nullptr, gv ? gv + i0 : nullptr,
                               gk, out_t + i0, out_u + i0, i1 - i0);
    });
  });
}

}  // namespace

TORCH_LIBRARY(vdcore, m) {
  m.def("svd_stats_forward(Tensor theta, Tensor log_sigma2, float clip, float threshold, bool train_mask)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("svd_stats_backward(Tensor theta, Tensor saved, Tensor? g_mean, Tensor? g_var, Tensor? g_kl,"
        " Tensor(a!) g_theta, Tensor(b!) g_log_sigma2) -> ()");
}

TORCH_LIBRARY_IMPL(vdcore, CPU, m) {
  m.impl("svd_stats_forward", &stats_forward);
  m.impl("svd_stats_backward", &stats_backward);
}
