// Token sampling on the device: the CPU sampler's chain (rocmforge_core/sampler.py, candidate_probs and
// Sampler._draw) for one row of logits per block, so a sampling decode step needs only the chosen id
// on the host. The chain: the top_k best logits (best first, equal logits in id order), top-p over
// their softmax at temperature 1 (the shortest best-first prefix reaching p; the best always kept),
// min-p (logit >= best + log(min_p)), temperature, then the inverse-CDF draw with the host's uniform u
// (the request's own seeded generator draws it, as the CPU's does). top_k is 1..RF_SAMPLE_MAX_K here;
// other settings stay on the host.
//
// The k-th largest logit is found by a radix select over order-preserving 32-bit keys (four passes of
// 8 bits, a shared histogram each), the candidates above it gathered, and those equal to it taken in
// id order (a block-wide ordered count over contiguous chunks). The k candidates are ranked in
// parallel; the few steps after that run on one thread in double precision, as the CPU computes them.
#include "rf_prelude.h"

#define RF_SAMPLE_MAX_K 256
#define RF_SAMPLE_PARAMS 5  // per row: temperature, top_k, top_p, min_p, u

RF_DEV uint32_t rf_order_key(float v) {  // larger float -> larger key
    const uint32_t u = rf_float_as_bits(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#if defined(RF_PLATFORM_HOST)
RF_DEV int rf_shared_add(int* p, int v) { const int old = *p; *p += v; return old; }
#else
RF_DEV int rf_shared_add(int* p, int v) { return atomicAdd(p, v); }
#endif

// logits: (rows, ld) float32, n_vocab per row; params: (rows, RF_SAMPLE_PARAMS); out: (rows,) int32.
// grid = (rows), any block size up to RF_MAX_THREADS (256 keeps the ordered tie count cheap).
extern "C" __global__ void sample_topk_f32(const float* __restrict__ logits, int n_vocab, long long ld,
                                           const float* __restrict__ params, int* __restrict__ out) {
    __shared__ int s_hist[256];
    __shared__ int s_count[RF_MAX_THREADS];
    __shared__ uint32_t s_prefix;
    __shared__ int s_need, s_n;
    __shared__ int s_ids[RF_SAMPLE_MAX_K], s_sorted_ids[RF_SAMPLE_MAX_K];
    __shared__ float s_vals[RF_SAMPLE_MAX_K], s_sorted[RF_SAMPLE_MAX_K];
    const long long r = blockIdx.x;
    const float* x = logits + r * ld;
    const float* pr = params + r * RF_SAMPLE_PARAMS;
    const float temperature = pr[0], top_p = pr[2], min_p = pr[3], u = pr[4];
    int k = (int)pr[1];
    k = k < 1 ? 1 : k > RF_SAMPLE_MAX_K ? RF_SAMPLE_MAX_K : k;
    k = k > n_vocab ? n_vocab : k;

    // 1. The k-th largest key, 8 bits at a time from the top.
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_need = k;  // how many of the keys matching the prefix so far are still wanted
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) s_hist[b] = 0;
        __syncthreads();
        const uint32_t hi_mask = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        const uint32_t prefix = s_prefix;
        for (int i = threadIdx.x; i < n_vocab; i += blockDim.x) {
            const uint32_t key = rf_order_key(x[i]);
            if ((key & hi_mask) == prefix) rf_shared_add(&s_hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0, b = 255;
            for (; b > 0 && above + s_hist[b] < s_need; --b) above += s_hist[b];
            s_prefix = prefix | ((uint32_t)b << shift);
            s_need -= above;
        }
        __syncthreads();
    }
    const uint32_t kth = s_prefix;
    const int ties = s_need;  // keys equal to kth to take, the lowest ids first

    // 2. Gather: every key above kth, then the first `ties` equal to it in id order.
    if (threadIdx.x == 0) s_n = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x) {
        if (rf_order_key(x[i]) > kth) {
            const int at = rf_shared_add(&s_n, 1);
            s_ids[at] = i;
            s_vals[at] = x[i];
        }
    }
    const int chunk = (n_vocab + blockDim.x - 1) / blockDim.x;
    const int lo = threadIdx.x * chunk, hi = lo + chunk < n_vocab ? lo + chunk : n_vocab;
    int mine = 0;
    for (int i = lo; i < hi; ++i) mine += rf_order_key(x[i]) == kth;
    s_count[threadIdx.x] = mine;
    __syncthreads();
    int before = 0;  // ties in the chunks of lower threads (lower ids)
    for (int t = 0; t < (int)threadIdx.x; ++t) before += s_count[t];
    const int base = k - ties;
    for (int i = lo; i < hi && before < ties; ++i) {
        if (rf_order_key(x[i]) == kth) {
            s_ids[base + before] = i;
            s_vals[base + before] = x[i];
            ++before;
        }
    }
    __syncthreads();

    // 3. Best first, equal values by id.
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        const float v = s_vals[c];
        const int id = s_ids[c];
        int rank = 0;
        for (int j = 0; j < k; ++j) rank += s_vals[j] > v || (s_vals[j] == v && s_ids[j] < id);
        s_sorted[rank] = v;
        s_sorted_ids[rank] = id;
    }
    __syncthreads();

    // 4. top-p, min-p, temperature and the draw, as the CPU computes them (double precision).
    if (threadIdx.x != 0) return;
    const double best = s_sorted[0];
    int keep = k;
    if (top_p < 1.0f) {
        double z = 0.0;
        for (int c = 0; c < k; ++c) z += exp((double)s_sorted[c] - best);
        double above = 0.0;
        int c = 0;
        for (; c < k; ++c) {  // kept while the probability ranked above is below p
            if (above >= (double)top_p) break;
            above += exp((double)s_sorted[c] - best) / z;
        }
        keep = c;
    }
    if (min_p > 0.0f) {
        const double floor_v = best + log((double)min_p);
        int c = 1;
        while (c < keep && (double)s_sorted[c] >= floor_v) ++c;
        keep = c;
    }
    double total = 0.0;
    for (int c = 0; c < keep; ++c) total += exp(((double)s_sorted[c] - best) / (double)temperature);
    const double target = (double)u * total;
    double cdf = 0.0;
    int pick = 0, last = 0;
    for (int c = 0; c < keep; ++c) {
        const double p = exp(((double)s_sorted[c] - best) / (double)temperature);
        cdf += p;
        if (p > 0.0) last = c;
        if (cdf <= target) pick = c + 1;
    }
    pick = pick < last ? pick : last;
    out[r] = s_sorted_ids[pick];
}

// ---------------------------------------------------------------- penalties
// The CPU's apply_penalties (sampler.py) on the device, before the draw: for each id in a row's window of
// recent history (ids: (rows, W) int32, -1 = padding; ids outside 0..n_vocab-1 ignored) counted
// `count` times, the logit s becomes s * repeat (s <= 0) or s / repeat (s > 0), minus count * frequency
// minus presence, in double precision, clamped to float32's finite range (NaN to its most negative),
// once per distinct id: the thread that holds an id's first place in the window writes it.
// pen: (rows, 3) double = repeat, frequency, presence (the host's own values, not rounded to float).
// grid = (rows), any block size.
extern "C" __global__ void penalize_f32(float* __restrict__ logits, int n_vocab, long long ld,
                                        const int* __restrict__ ids, int window, const double* __restrict__ pen) {
    const long long r = blockIdx.x;
    const int* w = ids + r * window;
    const double repeat = pen[3 * r], frequency = pen[3 * r + 1], presence = pen[3 * r + 2];
    if (repeat == 1.0 && frequency == 0.0 && presence == 0.0) return;
    float* x = logits + r * ld;
    for (int j = threadIdx.x; j < window; j += blockDim.x) {
        const int v = w[j];
        if (v < 0 || v >= n_vocab) continue;
        bool first = true;
        int count = 0;
        for (int i = 0; i < window; ++i) {
            if (w[i] == v) {
                first = first && i >= j;
                ++count;
            }
        }
        if (!first) continue;
        double s = (double)x[v];
        s = s <= 0.0 ? s * repeat : s / repeat;
        s = s - (double)count * frequency - presence;
        const double lim = 3.4028234663852886e38;  // FLT_MAX
        s = s != s ? -lim : s < -lim ? -lim : s > lim ? lim : s;
        x[v] = (float)s;
    }
}
