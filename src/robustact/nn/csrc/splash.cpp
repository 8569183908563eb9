// SPLASH fused CPU kernel: forward and backward in one loop each (see
// robustact/nn/_splash_kernel.py for the numerics contract). Shipped as package data and
// compiled on first use with torch.utils.cpp_extension.load_inline.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace {

using at::vec::Vectorized;

// Elements per deterministic partial sum in the backward (also the parallel grain).
constexpr int64_t kChunk = 32768;

// The vector path only where ATen's Vectorized<T> has a native implementation we compiled for
// (the build sets CPU_CAPABILITY_AVX2); its generic fallback is a loop over arrays, measured
// ~40x slower than the plain scalar loop below.
#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kVectorized = true;
#else
constexpr bool kVectorized = false;
#endif

// ---- scalar path: any number of intervals, run tails ------------------------------------------

// Interval position, exactly as the eager path computes it: u = x·(−1/Δ) rounded, then + K
// rounded (no fused multiply-add: built with -ffp-contract=off), NaN -> 0, clamp to [0, 2K−1].
// The interval index (tables right to left) is trunc(u).
template <typename T>
inline T position(T xv, T nid, T kf, T hi) {
  T u = xv * nid;
  u = u + kf;
  u = u > T(0) ? u : T(0);
  u = u < hi ? u : hi;
  return u;
}

template <typename T>
void forward_scalar(const T* x, T* y, const T* m, const T* c, int64_t len, T nid, int tk) {
  const T kf = T(tk / 2), hi = T(tk - 1);
  for (int64_t i = 0; i < len; ++i) {
    const T xv = x[i];
    const int j = static_cast<int>(position(xv, nid, kf, hi));
    y[i] = c[j] + m[j] * xv;
  }
}

// Adds the per-interval sums of g·x to sm[0..tk) and of g to sc[0..tk).
template <typename T, bool NeedX, bool NeedSums>
void backward_scalar(const T* x, const T* g, T* dx, const T* m, double* sm, double* sc,
                     int64_t len, T nid, int tk) {
  const T kf = T(tk / 2), hi = T(tk - 1);
  for (int64_t i = 0; i < len; ++i) {
    const T xv = x[i], gv = g[i];
    const int j = static_cast<int>(position(xv, nid, kf, hi));
    if (NeedX) dx[i] = m[j] * gv;
    if (NeedSums) {
      sm[j] += double(gv * xv);
      sc[j] += double(gv);
    }
  }
}

// ---- vector path: a fixed number of intervals TK (S = 3, 5, 7) ---------------------------------
// Table look-ups as a chain of compare-and-blend (u >= q selects interval q or beyond), which
// gives the same interval as trunc(u) and vectorises without gathers; per-interval sums as
// masked adds into TK vector accumulators (float lanes, flushed to double every kFlush
// vectors, so each lane adds at most 2·kFlush terms in T).

constexpr int kFlush = 64;

template <typename T>
inline Vectorized<T> position(const Vectorized<T>& xv, const Vectorized<T>& nid,
                              const Vectorized<T>& kf, const Vectorized<T>& hi) {
  using Vec = Vectorized<T>;
  const Vec zero(T(0));
  Vec u = xv * nid;
  u = u + kf;
  u = Vec::blendv(zero, u, u > zero);  // also NaN -> 0
  u = Vec::blendv(hi, u, u < hi);
  return u;
}

template <typename T, int TK>
void forward_vec(const T* x, T* y, const T* m, const T* c, int64_t len, T nid, int tk) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec vnid(nid), vkf(T(TK / 2)), vhi(T(TK - 1));
  Vec vm[TK], vc[TK], vq[TK];
  for (int q = 0; q < TK; ++q) {
    vm[q] = Vec(m[q]);
    vc[q] = Vec(c[q]);
    vq[q] = Vec(T(q));
  }
  int64_t i = 0;
  for (; i + V <= len; i += V) {
    const Vec xv = Vec::loadu(x + i);
    const Vec u = position(xv, vnid, vkf, vhi);
    Vec mv = vm[0], cv = vc[0];
    for (int q = 1; q < TK; ++q) {
      const Vec ge = u >= vq[q];
      mv = Vec::blendv(mv, vm[q], ge);
      cv = Vec::blendv(cv, vc[q], ge);
    }
    (cv + mv * xv).store(y + i);
  }
  forward_scalar<T>(x + i, y + i, m, c, len - i, nid, tk);
}

template <typename T, int TK, bool NeedX, bool NeedSums>
void backward_vec(const T* x, const T* g, T* dx, const T* m, double* sm, double* sc,
                  int64_t len, T nid, int tk) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec vnid(nid), vkf(T(TK / 2)), vhi(T(TK - 1)), vzero(T(0));
  Vec vm[TK], vq[TK], am[TK], ac[TK];
  for (int q = 0; q < TK; ++q) {
    vm[q] = Vec(m[q]);
    vq[q] = Vec(T(q));
  }
  int64_t i = 0;
  while (i + 2 * V <= len) {
    for (int q = 0; q < TK; ++q) am[q] = ac[q] = vzero;
    const int64_t end = std::min(len, i + 2 * V * kFlush);
    for (; i + 2 * V <= end; i += 2 * V) {  // two vectors per step: half the accumulator traffic
      const Vec xa = Vec::loadu(x + i), ga = Vec::loadu(g + i);
      const Vec xb = Vec::loadu(x + i + V), gb = Vec::loadu(g + i + V);
      const Vec ua = position(xa, vnid, vkf, vhi), ub = position(xb, vnid, vkf, vhi);
      const Vec gxa = ga * xa, gxb = gb * xb;
      Vec ma = vm[0], mb = vm[0];
      Vec pa = ua >= vq[0], pb = ub >= vq[0];  // all lanes set
      for (int q = 1; q < TK; ++q) {
        const Vec qa = ua >= vq[q], qb = ub >= vq[q];
        if (NeedX) {
          ma = Vec::blendv(ma, vm[q], qa);
          mb = Vec::blendv(mb, vm[q], qb);
        }
        if (NeedSums) {  // lanes in interval q−1: at or beyond q−1, not beyond q
          const Vec oa = pa ^ qa, ob = pb ^ qb;
          am[q - 1] = am[q - 1] + ((gxa & oa) + (gxb & ob));
          ac[q - 1] = ac[q - 1] + ((ga & oa) + (gb & ob));
        }
        pa = qa;
        pb = qb;
      }
      if (NeedSums) {
        am[TK - 1] = am[TK - 1] + ((gxa & pa) + (gxb & pb));
        ac[TK - 1] = ac[TK - 1] + ((ga & pa) + (gb & pb));
      }
      if (NeedX) {
        (ma * ga).store(dx + i);
        (mb * gb).store(dx + i + V);
      }
    }
    if (NeedSums) {
      T bm[V], bc[V];
      for (int q = 0; q < TK; ++q) {
        am[q].store(bm);
        ac[q].store(bc);
        double s1 = 0, s2 = 0;
        for (int64_t l = 0; l < V; ++l) {
          s1 += bm[l];
          s2 += bc[l];
        }
        sm[q] += s1;
        sc[q] += s2;
      }
    }
  }
  backward_scalar<T, NeedX, NeedSums>(x + i, g + i, NeedX ? dx + i : dx, m, sm, sc, len - i,
                                      nid, tk);
}

template <typename T>
using ForwardRun = void (*)(const T*, T*, const T*, const T*, int64_t, T, int);
template <typename T>
using BackwardRun = void (*)(const T*, const T*, T*, const T*, double*, double*, int64_t, T,
                             int);

template <typename T>
ForwardRun<T> forward_run(int tk) {
  if constexpr (kVectorized) {
    switch (tk) {
      case 4: return forward_vec<T, 4>;
      case 6: return forward_vec<T, 6>;
      case 8: return forward_vec<T, 8>;
      default: break;
    }
  }
  return forward_scalar<T>;
}

template <typename T, bool NeedX, bool NeedSums>
BackwardRun<T> backward_run(int tk) {
  if constexpr (kVectorized) {
    switch (tk) {
      case 4: return backward_vec<T, 4, NeedX, NeedSums>;
      case 6: return backward_vec<T, 6, NeedX, NeedSums>;
      case 8: return backward_vec<T, 8, NeedX, NeedSums>;
      default: break;
    }
  }
  return backward_scalar<T, NeedX, NeedSums>;
}

// Calls f(i0, i1, group) for the runs of [begin, end) that lie in one channel group of a
// contiguous (outer, groups, inner) tensor; one run when there is a single group.
template <typename F>
inline void for_runs(int64_t begin, int64_t end, int64_t groups, int64_t inner, const F& f) {
  if (groups == 1) {
    f(begin, end, int64_t(0));
    return;
  }
  int64_t blk = begin / inner, pos = begin % inner, i = begin;
  while (i < end) {
    const int64_t len = std::min(inner - pos, end - i);
    f(i, i + len, blk % groups);
    i += len;
    pos = 0;
    ++blk;
  }
}

template <typename T>
void forward_impl(const T* x, T* y, const T* m, const T* c, int64_t n, int64_t groups,
                  int64_t inner, T nid, int tk) {
  const ForwardRun<T> run = forward_run<T>(tk);
  at::parallel_for(0, n, kChunk, [&](int64_t b, int64_t e) {
    for_runs(b, e, groups, inner, [&](int64_t i0, int64_t i1, int64_t grp) {
      run(x + i0, y + i0, m + grp * tk, c + grp * tk, i1 - i0, nid, tk);
    });
  });
}

// part: (chunks, 2, groups·tk) float64 zeros; chunk `ch` adds its sums of g·x to row 0 and of
// g to row 1. Each chunk is done by one thread in element order, so the result does not depend
// on the number of threads.
template <typename T, bool NeedX, bool NeedSums>
void backward_impl(const T* x, const T* g, T* dx, const T* m, double* part, int64_t n,
                   int64_t groups, int64_t inner, T nid, int tk) {
  const BackwardRun<T> run = backward_run<T, NeedX, NeedSums>(tk);
  const int64_t gt = groups * tk;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> none(NeedSums ? 0 : 2 * tk);  // scratch when the sums are not wanted
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t b = ch * kChunk, e = std::min(n, b + kChunk);
      for_runs(b, e, groups, inner, [&](int64_t i0, int64_t i1, int64_t grp) {
        double* sm = NeedSums ? part + ch * 2 * gt + grp * tk : none.data();
        double* sc = NeedSums ? sm + gt : none.data();
        run(x + i0, g + i0, NeedX ? dx + i0 : dx, m + grp * tk, sm, sc, i1 - i0, nid, tk);
      });
    }
  });
}

void check_args(const at::Tensor& x, const at::Tensor& m, int64_t k, int64_t groups,
                int64_t inner) {
  TORCH_CHECK(x.device().is_cpu() && m.device().is_cpu(), "splash kernel: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "splash kernel: float32/float64 only");
  TORCH_CHECK(m.scalar_type() == x.scalar_type(), "splash kernel: table dtype != input dtype");
  TORCH_CHECK(x.is_contiguous() && m.is_contiguous(), "splash kernel: contiguous tensors only");
  TORCH_CHECK(k >= 1 && k < (int64_t(1) << 20) && groups >= 1 && inner >= 1,
              "splash kernel: bad k/groups/inner");
  TORCH_CHECK(m.numel() == groups * 2 * k, "splash kernel: table size != groups * 2K");
  TORCH_CHECK(groups == 1 || x.numel() % (groups * inner) == 0,
              "splash kernel: input size is not a multiple of groups * inner");
}

}  // namespace

// y = c[j] + m[j]·x. m, c: (groups·2K,) tables (right to left, group-major); inner = number of
// consecutive elements per channel (product of dims after 1) when groups > 1.
at::Tensor splash_forward(const at::Tensor& x, const at::Tensor& m, const at::Tensor& c,
                          double neg_inv_delta, int64_t k, int64_t groups, int64_t inner) {
  check_args(x, m, k, groups, inner);
  TORCH_CHECK(c.sizes() == m.sizes() && c.scalar_type() == m.scalar_type() && c.is_contiguous()
              && c.device().is_cpu(), "splash kernel: intercept table must match the slopes");
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "splash_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                           m.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), x.numel(), groups,
                           inner, static_cast<scalar_t>(neg_inv_delta), int(2 * k));
  });
  return y;
}

// Returns {dx, sums}: dx = m[j]·g (empty unless need_x); sums (empty unless need_sums) has
// shape (2, groups·2K) in x's dtype, row 0 the per-interval sums of g·x (the gradient of the
// slope table), row 1 those of g (the gradient of the intercept table).
std::vector<at::Tensor> splash_backward(const at::Tensor& x, const at::Tensor& g,
                                        const at::Tensor& m, double neg_inv_delta, int64_t k,
                                        int64_t groups, int64_t inner, bool need_x,
                                        bool need_sums) {
  check_args(x, m, k, groups, inner);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() && g.is_contiguous()
              && g.device().is_cpu(), "splash kernel: grad must match the input");
  const int64_t n = x.numel();
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  at::Tensor dx = need_x ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor part = at::zeros({need_sums ? nchunks : 0, 2, groups * 2 * k},
                              x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "splash_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* mp = m.data_ptr<scalar_t>();
    scalar_t* dxp = need_x ? dx.data_ptr<scalar_t>() : nullptr;
    double* pp = part.data_ptr<double>();
    const scalar_t nid = static_cast<scalar_t>(neg_inv_delta);
    const int tk = int(2 * k);
    if (need_x && need_sums) {
      backward_impl<scalar_t, true, true>(xp, gp, dxp, mp, pp, n, groups, inner, nid, tk);
    } else if (need_x) {
      backward_impl<scalar_t, true, false>(xp, gp, dxp, mp, pp, n, groups, inner, nid, tk);
    } else if (need_sums) {
      backward_impl<scalar_t, false, true>(xp, gp, dxp, mp, pp, n, groups, inner, nid, tk);
    }
  });
  at::Tensor sums = need_sums ? part.sum(0).to(x.scalar_type()) : at::empty({0}, x.options());
  return {dx, sums};
}
