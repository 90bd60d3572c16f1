// Token sampling on the device: the CPU sampler's chain (rocmforge_core/sampler.py, candidate_probs and
// Sampler._draw) for one row of logits per block, so a sampling decode step needs only the chosen id
// on the host. The chain: the top_k best logits (best first, equal logits in id order), top-p over
// their softmax at temperature 1 (the shortest best-first prefix reaching p; the best always kept),
// min-p (logit >= best + log(min_p)), temperature, then the inverse-CDF draw with the host's uniform u
// (the request's own seeded generator draws it, as the CPU's does). top_k is 1..RF_SAMPLE_MAX_K here;
// other settings stay on the host.
//
// The k-th largest logit is found by a radix select over order-preserving 32-bit keys (four passes of
// 8 bits, shared histograms each), the candidates above it gathered, and those equal to it taken in
// id order (a block-wide ordered count over contiguous chunks). The k candidates are ranked in
// parallel; the few steps after that run on one thread in double precision, as the CPU computes them.
// A large vocabulary first goes through many blocks, each keeping the k best of its slice of ids
// (sample_slices_f32), and one block per row then selects from those (sample_pick_f32): with one
// block over a row of 128k logits, a sampled step of an 8B model took ~1.2 ms longer than a greedy
// one on an H200.
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

// Shared state of one block's top-k (rf_topk_sorted). The radix histograms are kept per group of
// warps (RF_SAMPLE_HISTS copies, summed before each scan): logits crowd into a few top-byte bins, and
// one shared copy made every thread's atomic add wait for the others'.
#define RF_SAMPLE_HISTS 8
struct rf_topk_smem {
    int hist[RF_SAMPLE_HISTS][256];
    int count[RF_MAX_THREADS];
    uint32_t prefix;
    int need, n;
    int ids[RF_SAMPLE_MAX_K], sorted_ids[RF_SAMPLE_MAX_K];
    float vals[RF_SAMPLE_MAX_K], sorted[RF_SAMPLE_MAX_K];
};

// The k (1..min(n, RF_SAMPLE_MAX_K)) best of x[0..n) into sm.sorted / sm.sorted_ids, best first, equal
// values by id; a value's id is ids[i] (i when ids is null), and among equal values the lower position
// must hold the lower id (true of logits, and of rf_sample_slices' output, see there). Every thread of
// the block calls it; it ends with a barrier.
RF_DEV void rf_topk_sorted(const float* __restrict__ x, const int* __restrict__ ids, int n, int k,
                           rf_topk_smem& sm) {
    const int hist_of = (int)(threadIdx.x / WARP_SIZE) % RF_SAMPLE_HISTS;
    // 1. The k-th largest key, 8 bits at a time from the top.
    if (threadIdx.x == 0) {
        sm.prefix = 0;
        sm.need = k;  // how many of the keys matching the prefix so far are still wanted
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < RF_SAMPLE_HISTS * 256; b += blockDim.x) sm.hist[b / 256][b % 256] = 0;
        __syncthreads();
        const uint32_t hi_mask = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        const uint32_t prefix = sm.prefix;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const uint32_t key = rf_order_key(x[i]);
            if ((key & hi_mask) == prefix) rf_shared_add(&sm.hist[hist_of][(key >> shift) & 255u], 1);
        }
        __syncthreads();
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
            int t = sm.hist[0][b];
            for (int h = 1; h < RF_SAMPLE_HISTS; ++h) t += sm.hist[h][b];
            sm.hist[0][b] = t;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0, b = 255;
            for (; b > 0 && above + sm.hist[0][b] < sm.need; --b) above += sm.hist[0][b];
            sm.prefix = prefix | ((uint32_t)b << shift);
            sm.need -= above;
        }
        __syncthreads();
    }
    const uint32_t kth = sm.prefix;
    const int ties = sm.need;  // keys equal to kth to take, the lowest positions first

    // 2. Gather: every key above kth, then the first `ties` equal to it in position order.
    if (threadIdx.x == 0) sm.n = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (rf_order_key(x[i]) > kth) {
            const int at = rf_shared_add(&sm.n, 1);
            sm.ids[at] = ids ? ids[i] : i;
            sm.vals[at] = x[i];
        }
    }
    const int chunk = (n + blockDim.x - 1) / blockDim.x;
    const int lo = threadIdx.x * chunk, hi = lo + chunk < n ? lo + chunk : n;
    int mine = 0;
    for (int i = lo; i < hi; ++i) mine += rf_order_key(x[i]) == kth;
    sm.count[threadIdx.x] = mine;
    __syncthreads();
    int before = 0;  // ties in the chunks of lower threads (lower positions)
    for (int t = 0; t < (int)threadIdx.x; ++t) before += sm.count[t];
    const int base = k - ties;
    for (int i = lo; i < hi && before < ties; ++i) {
        if (rf_order_key(x[i]) == kth) {
            sm.ids[base + before] = ids ? ids[i] : i;
            sm.vals[base + before] = x[i];
            ++before;
        }
    }
    __syncthreads();

    // 3. Best first, equal values by id.
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        const float v = sm.vals[c];
        const int id = sm.ids[c];
        int rank = 0;
        for (int j = 0; j < k; ++j) rank += sm.vals[j] > v || (sm.vals[j] == v && sm.ids[j] < id);
        sm.sorted[rank] = v;
        sm.sorted_ids[rank] = id;
    }
    __syncthreads();
}

// top-p, min-p, temperature and the draw over the k sorted candidates, as the CPU computes them (double
// precision, one thread): the chosen id.
RF_DEV int rf_sample_draw(const rf_topk_smem& sm, int k, float temperature, float top_p, float min_p, float u) {
    const double best = sm.sorted[0];
    int keep = k;
    if (top_p < 1.0f) {
        double z = 0.0;
        for (int c = 0; c < k; ++c) z += exp((double)sm.sorted[c] - best);
        double above = 0.0;
        int c = 0;
        for (; c < k; ++c) {  // kept while the probability ranked above is below p
            if (above >= (double)top_p) break;
            above += exp((double)sm.sorted[c] - best) / z;
        }
        keep = c;
    }
    if (min_p > 0.0f) {
        const double floor_v = best + log((double)min_p);
        int c = 1;
        while (c < keep && (double)sm.sorted[c] >= floor_v) ++c;
        keep = c;
    }
    double total = 0.0;
    for (int c = 0; c < keep; ++c) total += exp(((double)sm.sorted[c] - best) / (double)temperature);
    const double target = (double)u * total;
    double cdf = 0.0;
    int pick = 0, last = 0;
    for (int c = 0; c < keep; ++c) {
        const double p = exp(((double)sm.sorted[c] - best) / (double)temperature);
        cdf += p;
        if (p > 0.0) last = c;
        if (cdf <= target) pick = c + 1;
    }
    pick = pick < last ? pick : last;
    return sm.sorted_ids[pick];
}

RF_DEV int rf_sample_k(const float* pr, int n_vocab) {
    int k = (int)pr[1];
    k = k < 1 ? 1 : k > RF_SAMPLE_MAX_K ? RF_SAMPLE_MAX_K : k;
    return k > n_vocab ? n_vocab : k;
}

// logits: (rows, ld) float32, n_vocab per row; params: (rows, RF_SAMPLE_PARAMS); out: (rows,) int32.
// One block per row over the whole vocabulary (small ones; rf_sample_slices + sample_pick_f32 split a
// large one over many blocks). grid = (rows), any block size up to RF_MAX_THREADS (256 keeps the
// ordered tie count cheap).
extern "C" __global__ void sample_topk_f32(const float* __restrict__ logits, int n_vocab, long long ld,
                                           const float* __restrict__ params, int* __restrict__ out) {
    __shared__ rf_topk_smem sm;
    const long long r = blockIdx.x;
    const float* pr = params + r * RF_SAMPLE_PARAMS;
    const int k = rf_sample_k(pr, n_vocab);
    rf_topk_sorted(logits + r * ld, nullptr, n_vocab, k, sm);
    if (threadIdx.x == 0) out[r] = rf_sample_draw(sm, k, pr[0], pr[2], pr[3], pr[4]);
}

// A large vocabulary in two launches. First each block takes `slice` consecutive ids of a row (slice >=
// RF_SAMPLE_MAX_K, so every slice but the last holds at least k) and leaves its k best, sorted, at
// cand[r * n_slices * RF_SAMPLE_MAX_K + s * k ...] (the last slice min(k, its length)): the candidates
// of a row are contiguous, and among equal values a lower position holds a lower id (slices in id
// order, each sorted by value then id), as rf_topk_sorted needs. The row's k best are among them.
// grid = (n_slices, rows).
extern "C" __global__ void sample_slices_f32(const float* __restrict__ logits, int n_vocab, long long ld,
                                             const float* __restrict__ params, int slice,
                                             float* __restrict__ cand_v, int* __restrict__ cand_i) {
    __shared__ rf_topk_smem sm;
    const int s = blockIdx.x, n_slices = gridDim.x;
    const long long r = blockIdx.y;
    const int k = rf_sample_k(params + r * RF_SAMPLE_PARAMS, n_vocab);
    const int lo = s * slice, n = n_vocab - lo < slice ? n_vocab - lo : slice;
    const int m = k < n ? k : n;
    rf_topk_sorted(logits + r * ld + lo, nullptr, n, m, sm);
    const long long at = r * n_slices * RF_SAMPLE_MAX_K + (long long)s * k;
    for (int c = threadIdx.x; c < m; c += blockDim.x) {
        cand_v[at + c] = sm.sorted[c];
        cand_i[at + c] = sm.sorted_ids[c] + lo;
    }
}

// Then one block per row draws from its candidates, as sample_topk_f32 draws from the whole row.
// grid = (rows).
extern "C" __global__ void sample_pick_f32(const float* __restrict__ cand_v, const int* __restrict__ cand_i,
                                           int n_vocab, int slice, int n_slices,
                                           const float* __restrict__ params, int* __restrict__ out) {
    __shared__ rf_topk_smem sm;
    const long long r = blockIdx.x;
    const float* pr = params + r * RF_SAMPLE_PARAMS;
    const int k = rf_sample_k(pr, n_vocab);
    const int last = n_vocab - (n_slices - 1) * slice;
    const int count = (n_slices - 1) * k + (k < last ? k : last);
    const long long at = r * n_slices * RF_SAMPLE_MAX_K;
    rf_topk_sorted(cand_v + at, cand_i + at, count, k, sm);
    if (threadIdx.x == 0) out[r] = rf_sample_draw(sm, k, pr[0], pr[2], pr[3], pr[4]);
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

// A penalty window built before its last id was known (a sampled step queued ahead of the host: the
// newest history id is the previous step's draw, still on the device): every RF_WINDOW_PENDING entry
// of row r becomes tokens[r]. ids: (rows, width) int32. grid = (rows), any block size.
#define RF_WINDOW_PENDING (-2)
extern "C" __global__ void fill_window_i32(int* __restrict__ ids, int width, const int* __restrict__ tokens) {
    const long long r = blockIdx.x;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        if (ids[r * width + j] == RF_WINDOW_PENDING) ids[r * width + j] = tokens[r];
    }
}
