"""Kernels of transformer inference that the other modules lack: embedding lookups, rotary
position embedding with the KV-cache append, grouped-query decode attention over a KV cache,
SwiGLU, bias + activation, greedy sampling (argmax) and the position update of a decode step.

One ``cupy.RawModule`` (``transformer``), its kernels templated on the storage type
(``__half``, ``__nv_bfloat16``; `embedding_sum` and `bias_act` also ``float``), fp32
arithmetic:

- ``embedding_gather<T>``: ``out[t] = table[ids[t]]``, rows of a (vocab, d) table or
  columns of a (d, vocab) one (an LM head tied to the embedding). Grid ``tokens``, up to
  256 threads (one per element of a row of 256 or less).
- ``embedding_sum<T>``: ``out[t] = word[ids[t]] + pos[t % seq] (+ type[type_ids[t]])``
  (BERT's, GPT-2's input embedding). Grid and block as ``embedding_gather``.
- ``rope_kv_append<T>``: rotates the query and key heads of a fused QKV projection by
  their token's position (pairs ``(i, i + D/2)``, HF Llama's ``rotate_half`` layout),
  in place for the queries; writes the rotated keys and the values into the KV cache at
  the token's (slot, position). Grid ``tokens``, 128 threads.
- ``gqa_decode_partial<T>`` / ``gqa_decode_combine<T>``: one query per sequence against
  keys ``0..pos[b]`` of its cache slot, query heads grouped over shared KV heads
  (grouped-query attention), split over the keys (flash-decoding): block ``(c, g, b)``
  scores chunk ``c`` of sequence ``b`` for the query heads of KV head ``g``; the combine
  kernel merges the chunks' partial softmaxes. The grid covers the whole cache and blocks
  past a sequence's position return at once, so a captured CUDA graph stays valid as the
  positions (read from device memory) advance.
- ``swiglu<T>``: ``silu(gate) * up`` over the two halves of a fused gate/up projection.
- ``bias_act<T>``: ``act(x + bias)``, act none, GELU (erf), GELU (tanh) or tanh. These
  two give each thread 4 elements (strided by the block), grid ``ceil(n / 1024)``.
- ``argmax_rows``: the first index of each row's maximum (fp32 logits), written as the
  next input token. ``advance_positions``: every sequence one position on, back to its
  start position when its cache is full.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kernels import dtypes
from kernels._compile import (
    CONVERT_SNIPPET,
    REDUCE_SNIPPET,
    KernelSource,
    as_cupy_stream,
    cdiv,
    check_array,
    module_function,
)

THREADS = 256
#: Elements per thread of `swiglu` and `bias_act`.
ITEMS = 4
ROPE_THREADS = 128
DECODE_THREADS = 128
#: Most query heads one KV head may serve (the group of grouped-query attention).
MAX_GROUP = 8
#: Activations of `bias_act`.
ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "tanh": 3}

_CODE = CONVERT_SNIPPET + REDUCE_SNIPPET + r"""
constexpr int MAX_GROUP = 8;
constexpr int ITEMS = 4;   // elements per thread of the elementwise kernels

// out[t, i] = table[ids[t] * s_id + i * s_col], i < d.
template <typename T>
__global__ void __launch_bounds__(256) embedding_gather(const int* __restrict__ ids, const T* __restrict__ table,
                                                        T* __restrict__ out, int d, long long s_id, long long s_col)
{
    const long long base = (long long)ids[blockIdx.x] * s_id;
    T* o = out + (long long)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = table[base + i * s_col];
}

// out[t, :] = word[ids[t], :] + pos[t % seq, :] (+ type[type_ids[t], :] when has_type), summed in fp32.
template <typename T>
__global__ void __launch_bounds__(256) embedding_sum(const int* __restrict__ ids, const int* __restrict__ type_ids,
                                                     const T* __restrict__ word, const T* __restrict__ pos,
                                                     const T* __restrict__ type, T* __restrict__ out, int d, int seq,
                                                     int has_type)
{
    const long long t = blockIdx.x;
    const T* w = word + (long long)ids[t] * d;
    const T* p = pos + (t % seq) * d;
    const T* ty = type + (has_type ? (long long)type_ids[t] * d : 0);
    T* o = out + t * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = to_f32(w[i]) + to_f32(p[i]);
        if (has_type) v += to_f32(ty[i]);
        o[i] = from_f32<T>(v);
    }
}

// qkv: rows of (H + 2 Hkv) * D (row stride ld): H query heads, Hkv key heads, Hkv value heads.
// Token t sits at position pos[t] of cache slot slots[t * slot_step]; caches are (slots, Hkv, max_seq, D).
// The pair (i, i + D/2) of every query and key head turns by pos * inv_freq[i]: queries in place,
// keys into k_cache; values are copied into v_cache.
template <typename T>
__global__ void __launch_bounds__(128) rope_kv_append(T* __restrict__ qkv, long long ld, const int* __restrict__ pos,
                                                      const int* __restrict__ slots, int slot_step,
                                                      const float* __restrict__ inv_freq, T* __restrict__ k_cache,
                                                      T* __restrict__ v_cache, int H, int Hkv, int D, int max_seq)
{
    const int t = blockIdx.x, p = pos[t], half = D / 2;
    T* row = qkv + (long long)t * ld;
    const long long slot_row = (long long)slots[t * slot_step] * Hkv * max_seq + p;   // cache row of kv head 0
    for (int idx = threadIdx.x; idx < (H + Hkv) * half; idx += blockDim.x) {
        const int head = idx / half, i = idx % half;
        float s, c;
        sincosf((float)p * inv_freq[i], &s, &c);
        T* x = row + head * D;
        const float x0 = to_f32(x[i]), x1 = to_f32(x[i + half]);
        T* y = head < H ? x : k_cache + (slot_row + (long long)(head - H) * max_seq) * D;
        y[i] = from_f32<T>(x0 * c - x1 * s);
        y[i + half] = from_f32<T>(x1 * c + x0 * s);
    }
    const T* v = row + (H + Hkv) * D;
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x)
        v_cache[(slot_row + (long long)(idx / D) * max_seq) * D + idx % D] = v[idx];
}

// Query heads g*G .. g*G + G-1 of sequence b (row b of q, stride ldq) against keys [k0, k0 + len) of
// kv head g in cache slot slots[b], k0 = c * chunk, len = min(chunk, pos[b] + 1 - k0). Writes per head
// h the chunk's max score m and sum l of 2^(s - m) to ml[b, h, c, :] and sum 2^(s - m) v to
// acc[b, h, c, :]; scores s = q.k * scale * log2(e). Blocks past pos[b] return before any barrier.
// Dynamic shared memory: (G * D + G * chunk) floats.
template <typename T>
__global__ void __launch_bounds__(128) gqa_decode_partial(
    const T* __restrict__ q, long long ldq, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
    const int* __restrict__ pos, const int* __restrict__ slots, float* __restrict__ ml, float* __restrict__ acc,
    int G, int Hkv, int D, int max_seq, int chunk, float scale_log2)
{
    extern __shared__ __align__(16) float smem[];
    const int c = blockIdx.x, g = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
    const int k0 = c * chunk, n_keys = pos[b] + 1;
    if (k0 >= n_keys) return;
    const int len = min(chunk, n_keys - k0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
    const int H = G * Hkv, h0 = g * G;
    float* qs = smem;              // [G][D], scaled
    float* sc = smem + G * D;      // [G][chunk]: scores, then 2^(s - m)
    for (int idx = tid; idx < G * D; idx += blockDim.x)
        qs[idx] = to_f32(q[(long long)b * ldq + (long long)h0 * D + idx]) * scale_log2;
    __syncthreads();

    const long long first = ((long long)slots[b] * Hkv + g) * max_seq + k0;
    const T* K = k_cache + first * D;
    const T* V = v_cache + first * D;
    for (int j = warp; j < len; j += nwarps) {   // a warp per key
        float s[MAX_GROUP];
#pragma unroll
        for (int hh = 0; hh < MAX_GROUP; ++hh) s[hh] = 0.0f;
        for (int i = lane; i < D; i += 32) {
            const float kv = to_f32(K[(long long)j * D + i]);
#pragma unroll
            for (int hh = 0; hh < MAX_GROUP; ++hh)
                if (hh < G) s[hh] = fmaf(qs[hh * D + i], kv, s[hh]);
        }
#pragma unroll
        for (int hh = 0; hh < MAX_GROUP; ++hh) {
            if (hh >= G) break;
            const float v = warp_sum(s[hh]);
            if (lane == 0) sc[hh * chunk + j] = v;
        }
    }
    __syncthreads();

    for (int hh = warp; hh < G; hh += nwarps) {   // a warp per head
        float* row = sc + hh * chunk;
        float m = -INFINITY;
        for (int j = lane; j < len; j += 32) m = fmaxf(m, row[j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < len; j += 32) {
            const float p = exp2f(row[j] - m);
            row[j] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            float* o = ml + (((long long)b * H + h0 + hh) * splits + c) * 2;
            o[0] = m;
            o[1] = l;
        }
    }
    __syncthreads();

    for (int idx = tid; idx < G * D; idx += blockDim.x) {
        const int hh = idx / D, i = idx % D;
        const float* p = sc + hh * chunk;
        float a = 0.0f;
        for (int j = 0; j < len; ++j) a = fmaf(p[j], to_f32(V[(long long)j * D + i]), a);
        acc[(((long long)b * H + h0 + hh) * splits + c) * D + i] = a;
    }
}

// out[b, h * D + i] (row stride ldo) from the partials of the chunks c <= pos[b] / chunk.
// Grid (H, B), block D threads.
template <typename T>
__global__ void __launch_bounds__(128) gqa_decode_combine(const float* __restrict__ ml, const float* __restrict__ acc,
                                                          const int* __restrict__ pos, T* __restrict__ out,
                                                          long long ldo, int D, int chunk, int splits)
{
    const int h = blockIdx.x, b = blockIdx.y, H = gridDim.x, i = threadIdx.x;
    const int used = pos[b] / chunk + 1;
    const long long head = (long long)b * H + h;
    const float* m = ml + head * splits * 2;
    float M = -INFINITY;
    for (int c = 0; c < used; ++c) M = fmaxf(M, m[2 * c]);
    float num = 0.0f, den = 0.0f;
    for (int c = 0; c < used; ++c) {
        const float w = exp2f(m[2 * c] - M);
        den = fmaf(w, m[2 * c + 1], den);
        num = fmaf(w, acc[(head * splits + c) * D + i], num);
    }
    out[(long long)b * ldo + (long long)h * D + i] = from_f32<T>(num / den);
}

// y[r, i] = silu(gu[r, i]) * gu[r, F + i] for the n = rows * F outputs, ITEMS per thread.
template <typename T>
__global__ void __launch_bounds__(256) swiglu(const T* __restrict__ gu, T* __restrict__ y, long long n, int F)
{
    const long long first = (long long)blockIdx.x * blockDim.x * ITEMS + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long idx = first + (long long)k * blockDim.x;
        if (idx >= n) return;
        const long long r = idx / F, i = idx % F;
        const float g = to_f32(gu[r * 2 * F + i]), u = to_f32(gu[r * 2 * F + F + i]);
        y[idx] = from_f32<T>(g / (1.0f + expf(-g)) * u);
    }
}

// y[i] = act(x[i] + bias[i % cols]); act 0 none, 1 GELU (erf), 2 GELU (tanh approximation), 3 tanh. y may be x.
template <typename T>
__global__ void __launch_bounds__(256) bias_act(const T* x, const T* __restrict__ bias, T* y, long long n, int cols,
                                                int act)
{
    const long long first = (long long)blockIdx.x * blockDim.x * ITEMS + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long idx = first + (long long)k * blockDim.x;
        if (idx >= n) return;
        const float v = to_f32(x[idx]) + to_f32(bias[idx % cols]);
        float r = v;
        if (act == 1) r = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
        else if (act == 2) r = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * fmaf(0.044715f * v, v * v, v)));
        else if (act == 3) r = tanhf(v);
        y[idx] = from_f32<T>(r);
    }
}

// out[r] = the first index of the largest x[r, :] (NaN never wins; 0 when no value does). Block 256.
__global__ void __launch_bounds__(256) argmax_rows(const float* __restrict__ x, int cols, int* __restrict__ out)
{
    __shared__ float best[256];
    __shared__ int where[256];
    const float* xr = x + (long long)blockIdx.x * cols;
    const int tid = threadIdx.x;
    float v = -INFINITY;
    int at = 0x7fffffff;
    for (int c = tid; c < cols; c += blockDim.x) {
        const float y = xr[c];
        if (y > v || (y == v && c < at)) { v = y; at = c; }
    }
    best[tid] = v;
    where[tid] = at;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float ov = best[tid + s];
            const int oi = where[tid + s];
            if (ov > best[tid] || (ov == best[tid] && oi < where[tid])) { best[tid] = ov; where[tid] = oi; }
        }
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = where[0] == 0x7fffffff ? 0 : where[0];
}

// pos[b] += 1, or pos[b] = start[b] when pos[b] + 1 == max_seq (the slot's sequence starts over).
__global__ void __launch_bounds__(128) advance_positions(int* __restrict__ pos, const int* __restrict__ start, int n,
                                                         int max_seq)
{
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < n) pos[b] = pos[b] + 1 < max_seq ? pos[b] + 1 : start[b];
}
"""

_HALF_KINDS = (dtypes.FLOAT16, dtypes.BFLOAT16)
_TEMPLATES = ("embedding_gather", "rope_kv_append", "gqa_decode_partial", "gqa_decode_combine", "swiglu")
TRANSFORMER_SOURCE = KernelSource(
    key="transformer", code=_CODE, kind="module",
    name_expressions=(*(f"{k}<{dtypes.CTYPE[t]}>" for k in _TEMPLATES for t in _HALF_KINDS),
                      *(f"{k}<{dtypes.CTYPE[t]}>" for k in ("embedding_sum", "bias_act")
                        for t in (dtypes.FLOAT32, *_HALF_KINDS)),
                      "argmax_rows", "advance_positions"),
)


def cupy_sources() -> list[KernelSource]:
    """Every CuPy kernel source of this module."""
    return [TRANSFORMER_SOURCE]


def _fn(kernel: str, kind: str | None = None) -> Any:
    return module_function(TRANSFORMER_SOURCE, kernel if kind is None else f"{kernel}<{dtypes.CTYPE[kind]}>")


def _row_threads(d: int) -> int:
    """Threads of a block copying one row of ``d``: a warp per 32 elements, up to 256."""
    return min(THREADS, 32 * cdiv(d, 32))


def _half_kind(x: Any, name: str) -> str:
    return dtypes.check_kind(x, name, _HALF_KINDS)


def _check_ints(x: Any, name: str, n: int | None = None) -> None:
    check_array(x, name, ndim=1, dtypes=(np.int32,))
    if n is not None and x.shape[0] < n:
        raise ValueError(f"{name} has {x.shape[0]} elements; at least {n} needed")


def _check_same(x: Any, name: str, ref: Any, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype.name} but {ref_name} has {ref.dtype.name}")


# ---- embeddings ---------------------------------------------------------------------------------


def embedding_gather(ids: Any, table: Any, out: Any, *, transposed: bool = False, stream: Any = None) -> Any:
    """``out[t] = table[ids[t]]``: one embedding row per token.

    Parameters
    ----------
    ids : cupy.ndarray
        (tokens,) int32 token ids.
    table : cupy.ndarray
        (vocab, d), or (d, vocab) when ``transposed`` (an LM head's weight tied to the
        embedding: ``out[t] = table[:, ids[t]]``); float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (tokens, d), table's dtype.
    transposed : bool
        Whether ``table`` is stored (d, vocab).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    _check_ints(ids, "ids")
    check_array(table, "table", ndim=2)
    kind = _half_kind(table, "table")
    d = table.shape[0] if transposed else table.shape[1]
    check_array(out, "out", ndim=2)
    _check_same(out, "out", table, "table")
    if tuple(out.shape) != (ids.shape[0], d):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected ({ids.shape[0]}, {d})")
    s_id, s_col = (1, table.shape[1]) if transposed else (d, 1)
    _fn("embedding_gather", kind)((ids.shape[0],), (_row_threads(d),),
                                  (ids, table, out, np.int32(d), np.int64(s_id), np.int64(s_col)),
                                  stream=as_cupy_stream(stream))
    return out


def embedding_sum(ids: Any, word: Any, pos: Any, out: Any, *, seq_len: int, type_ids: Any = None,
                  type_table: Any = None, stream: Any = None) -> Any:
    """``out[t] = word[ids[t]] + pos[t % seq_len] (+ type_table[type_ids[t]])``, summed in fp32.

    Parameters
    ----------
    ids : cupy.ndarray
        (tokens,) int32; tokens are sequences of ``seq_len`` one after another.
    word, pos : cupy.ndarray
        (vocab, d) and (at least seq_len, d); float32, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (tokens, d), word's dtype.
    seq_len : int
        Tokens per sequence (token t is at position ``t % seq_len``).
    type_ids, type_table : cupy.ndarray, optional
        (tokens,) int32 and (types, d): BERT's token-type (segment) embedding.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    _check_ints(ids, "ids")
    kind = dtypes.check_kind(word, "word")
    tables = [("word", word), ("pos", pos)] + ([("type_table", type_table)] if type_table is not None else [])
    for name, t in tables:
        check_array(t, name, ndim=2)
        _check_same(t, name, word, "word")
        if t.shape[1] != word.shape[1]:
            raise ValueError(f"{name} has width {t.shape[1]}; word has {word.shape[1]}")
    if pos.shape[0] < seq_len:
        raise ValueError(f"pos has {pos.shape[0]} rows; seq_len is {seq_len}")
    if (type_ids is None) != (type_table is None):
        raise ValueError("give both type_ids and type_table, or neither")
    if type_ids is not None:
        _check_ints(type_ids, "type_ids", ids.shape[0])
    check_array(out, "out", ndim=2)
    _check_same(out, "out", word, "word")
    if tuple(out.shape) != (ids.shape[0], word.shape[1]):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected ({ids.shape[0]}, {word.shape[1]})")
    has_type = type_ids is not None
    _fn("embedding_sum", kind)((ids.shape[0],), (_row_threads(word.shape[1]),),
                               (ids, type_ids if has_type else ids, word, pos, type_table if has_type else word, out,
                                np.int32(word.shape[1]), np.int32(seq_len), np.int32(has_type)),
                               stream=as_cupy_stream(stream))
    return out


# ---- rotary position embedding and the KV cache -----------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, float] | None = None) -> np.ndarray:
    """RoPE inverse frequencies ``theta ** (-2i / head_dim)`` (float64), with Llama 3's scaling.

    Parameters
    ----------
    head_dim : int
        Even head dimension.
    theta : float
        RoPE base (500000 for Llama 3).
    scaling : dict, optional
        Llama 3's ``rope_scaling`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
        ``original_max_position_embeddings``): wavelengths longer than the original
        context over ``low_freq_factor`` are divided by ``factor``, those shorter than it
        over ``high_freq_factor`` kept, those between interpolated (as in Hugging Face
        ``transformers``' ``rope_type="llama3"``).

    Returns
    -------
    numpy.ndarray
        (head_dim / 2,) float64.
    """
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    smooth = (orig / wavelen - low) / (high - low)
    medium = (1 - smooth) * inv / factor + smooth * inv
    return np.where(wavelen < orig / high, inv, np.where(wavelen > orig / low, inv / factor, medium))


def rope_kv_append(qkv: Any, positions: Any, slots: Any, inv_freq: Any, k_cache: Any, v_cache: Any, n_heads: int,
                   *, slot_step: int = 1, stream: Any = None) -> Any:
    """Rotate the query and key heads of a fused QKV projection; append keys and values to the cache.

    Parameters
    ----------
    qkv : cupy.ndarray
        (tokens, (n_heads + 2 kv_heads) * head_dim), rows possibly strided (a row slice of
        a larger buffer); float16 or bfloat16 (uint16 bits). The query heads come first,
        then the key heads, then the value heads. The query heads are rotated in place.
    positions : cupy.ndarray
        int32, at least ``tokens`` elements: token t's position.
    slots : cupy.ndarray
        int32: token t's cache slot is ``slots[t * slot_step]``.
    inv_freq : cupy.ndarray
        (head_dim / 2,) float32, e.g. from `rope_inv_freq`.
    k_cache, v_cache : cupy.ndarray
        (slots, kv_heads, max_seq, head_dim), qkv's dtype; the rotated key and the value of
        token t are written at ``[slot, :, position, :]``.
    n_heads : int
        Query heads.
    slot_step : int
        1 (a slot per token, as in a decode step) or 0 (every token into ``slots[0]``, as in
        a prefill).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``qkv`` (its query heads rotated).
    """
    check_array(qkv, "qkv", ndim=2, contiguous=False)
    kind = _half_kind(qkv, "qkv")
    check_array(k_cache, "k_cache", ndim=4)
    check_array(v_cache, "v_cache", ndim=4)
    _, Hkv, max_seq, D = k_cache.shape
    n = qkv.shape[0]
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache has shape {tuple(v_cache.shape)}; k_cache has {tuple(k_cache.shape)}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_same(c, name, qkv, "qkv")
    if qkv.shape[1] != (n_heads + 2 * Hkv) * D or qkv.strides[1] != qkv.dtype.itemsize:
        raise ValueError(f"qkv has shape {tuple(qkv.shape)}, strides {qkv.strides}; expected contiguous rows of "
                         f"({n_heads} + 2 * {Hkv}) * {D}")
    if D % 2:
        raise ValueError(f"head_dim must be even, got {D}")
    _check_ints(positions, "positions", n)
    _check_ints(slots, "slots", 1 if slot_step == 0 else n)
    if slot_step not in (0, 1):
        raise ValueError(f"slot_step must be 0 or 1, got {slot_step}")
    check_array(inv_freq, "inv_freq", ndim=1, dtypes=(np.float32,))
    if inv_freq.shape[0] != D // 2:
        raise ValueError(f"inv_freq has {inv_freq.shape[0]} elements; head_dim / 2 is {D // 2}")
    _fn("rope_kv_append", kind)((n,), (ROPE_THREADS,),
                                (qkv, np.int64(qkv.strides[0] // qkv.dtype.itemsize), positions, slots,
                                 np.int32(slot_step), inv_freq, k_cache, v_cache, np.int32(n_heads), np.int32(Hkv),
                                 np.int32(D), np.int32(max_seq)),
                                stream=as_cupy_stream(stream))
    return qkv


# ---- grouped-query decode attention -------------------------------------------------------------------


def decode_splits(max_seq: int, chunk: int) -> int:
    """Key chunks of the decode attention's grid: ``ceil(max_seq / chunk)``."""
    return cdiv(max_seq, chunk)


def decode_shared_bytes(group: int, head_dim: int, chunk: int) -> int:
    """Dynamic shared memory of ``gqa_decode_partial``: the group's queries and its scores."""
    return 4 * group * (head_dim + chunk)


def gqa_decode_attention(q: Any, k_cache: Any, v_cache: Any, positions: Any, slots: Any, out: Any, *, n_heads: int,
                         chunk: int, partial_ml: Any, partial_acc: Any, scale: float | None = None,
                         stream: Any = None) -> Any:
    """Attention of one query per sequence over its KV cache, query heads grouped on KV heads.

    Sequence b's query (row b of ``q``) attends to keys ``0..positions[b]`` (inclusive) of
    cache slot ``slots[b]``, query head h to KV head ``h // (n_heads / kv_heads)``. Keys
    are split into chunks of ``chunk``; the grid covers every chunk of the cache and blocks
    past a sequence's position exit, so the launch reads positions from device memory
    only (graph-capturable as positions change).

    Parameters
    ----------
    q : cupy.ndarray
        (batch, >= n_heads * head_dim), rows possibly strided: the query heads of a fused
        QKV projection; float16 or bfloat16 (uint16 bits).
    k_cache, v_cache : cupy.ndarray
        (slots, kv_heads, max_seq, head_dim), q's dtype.
    positions, slots : cupy.ndarray
        int32, at least ``batch`` elements.
    out : cupy.ndarray
        (batch, n_heads * head_dim) view with contiguous rows, q's dtype.
    n_heads : int
        Query heads; a multiple of kv_heads, at most 8 per KV head.
    chunk : int
        Keys per block.
    partial_ml, partial_acc : cupy.ndarray
        float32 workspaces of at least ``batch * n_heads * splits * 2`` and
        ``batch * n_heads * splits * head_dim`` elements, ``splits`` = `decode_splits`.
    scale : float, optional
        Score scale; ``1/sqrt(head_dim)`` when None.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(q, "q", ndim=2, contiguous=False)
    kind = _half_kind(q, "q")
    check_array(k_cache, "k_cache", ndim=4)
    _, Hkv, max_seq, D = k_cache.shape
    B = q.shape[0]
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache has shape {tuple(v_cache.shape)}; k_cache has {tuple(k_cache.shape)}")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        check_array(x, name, contiguous=False)
        _check_same(x, name, q, "q")
    if n_heads % Hkv or not 1 <= n_heads // Hkv <= MAX_GROUP:
        raise ValueError(f"n_heads ({n_heads}) must be 1 to {MAX_GROUP} times kv_heads ({Hkv})")
    if D % 32 or D > DECODE_THREADS:
        raise ValueError(f"head_dim must be a multiple of 32 up to {DECODE_THREADS}, got {D}")
    if q.shape[1] < n_heads * D or q.strides[1] != q.dtype.itemsize:
        raise ValueError(f"q must hold {n_heads} heads of {D} in contiguous rows, got shape {tuple(q.shape)}")
    if tuple(out.shape) != (B, n_heads * D) or out.strides[1] != out.dtype.itemsize:
        raise ValueError(f"out has shape {tuple(out.shape)}, strides {out.strides}; expected ({B}, {n_heads * D}) "
                         "with contiguous rows")
    _check_ints(positions, "positions", B)
    _check_ints(slots, "slots", B)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    splits, group = decode_splits(max_seq, chunk), n_heads // Hkv
    for name, ws, per in (("partial_ml", partial_ml, 2), ("partial_acc", partial_acc, D)):
        check_array(ws, name, dtypes=(np.float32,))
        if ws.size < B * n_heads * splits * per:
            raise ValueError(f"{name} has {ws.size} elements; {B * n_heads * splits * per} needed")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    s = as_cupy_stream(stream)
    item = q.dtype.itemsize
    _fn("gqa_decode_partial", kind)(
        (splits, Hkv, B), (DECODE_THREADS,),
        (q, np.int64(q.strides[0] // item), k_cache, v_cache, positions, slots, partial_ml, partial_acc,
         np.int32(group), np.int32(Hkv), np.int32(D), np.int32(max_seq), np.int32(chunk),
         np.float32(scale * math.log2(math.e))),
        shared_mem=decode_shared_bytes(group, D, chunk), stream=s)
    _fn("gqa_decode_combine", kind)(
        (n_heads, B), (D,),
        (partial_ml, partial_acc, positions, out, np.int64(out.strides[0] // item), np.int32(D), np.int32(chunk),
         np.int32(splits)),
        stream=s)
    return out


# ---- elementwise, sampling, positions -------------------------------------------------------------------


def swiglu(gate_up: Any, out: Any, *, stream: Any = None) -> Any:
    """``out = silu(gate) * up`` where ``gate_up = [gate | up]`` along the last dimension.

    Parameters
    ----------
    gate_up : cupy.ndarray
        (rows, 2F), C-contiguous, float16 or bfloat16 (uint16 bits).
    out : cupy.ndarray
        (rows, F), gate_up's dtype.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(gate_up, "gate_up", ndim=2)
    kind = _half_kind(gate_up, "gate_up")
    rows, two_f = gate_up.shape
    check_array(out, "out", ndim=2)
    _check_same(out, "out", gate_up, "gate_up")
    if two_f % 2 or tuple(out.shape) != (rows, two_f // 2):
        raise ValueError(f"out has shape {tuple(out.shape)}; expected ({rows}, {two_f // 2}) for gate_up "
                         f"{tuple(gate_up.shape)}")
    n = rows * (two_f // 2)
    _fn("swiglu", kind)((cdiv(n, THREADS * ITEMS),), (THREADS,), (gate_up, out, np.int64(n), np.int32(two_f // 2)),
                        stream=as_cupy_stream(stream))
    return out


def bias_act(x: Any, bias: Any, out: Any, act: str = "none", *, stream: Any = None) -> Any:
    """``out = act(x + bias)``, the bias broadcast over the last dimension.

    Parameters
    ----------
    x : cupy.ndarray
        C-contiguous, float32, float16 or bfloat16 (uint16 bits).
    bias : cupy.ndarray
        1-D of ``x.shape[-1]`` elements, x's dtype.
    out : cupy.ndarray
        x's shape and dtype (may be x).
    act : str
        ``"none"``, ``"gelu"`` (erf), ``"gelu_tanh"`` (tanh approximation) or ``"tanh"``.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x")
    kind = dtypes.check_kind(x, "x")
    check_array(bias, "bias", ndim=1)
    _check_same(bias, "bias", x, "x")
    if bias.shape[0] != x.shape[-1]:
        raise ValueError(f"bias has {bias.shape[0]} elements; x's last dimension is {x.shape[-1]}")
    check_array(out, "out")
    _check_same(out, "out", x, "x")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected x's {tuple(x.shape)}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    n = int(x.size)
    _fn("bias_act", kind)((cdiv(n, THREADS * ITEMS),), (THREADS,),
                          (x, bias, out, np.int64(n), np.int32(x.shape[-1]), np.int32(ACTIVATIONS[act])),
                          stream=as_cupy_stream(stream))
    return out


def argmax_rows(x: Any, out: Any, *, stream: Any = None) -> Any:
    """``out[r]`` = the first index of the largest element of row r (greedy sampling).

    Parameters
    ----------
    x : cupy.ndarray
        (rows, cols) float32 logits, C-contiguous.
    out : cupy.ndarray
        int32, at least ``rows`` elements (e.g. the next step's input tokens).
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``out``.
    """
    check_array(x, "x", ndim=2, dtypes=(np.float32,))
    _check_ints(out, "out", x.shape[0])
    _fn("argmax_rows")((x.shape[0],), (THREADS,), (x, np.int32(x.shape[1]), out), stream=as_cupy_stream(stream))
    return out


def advance_positions(positions: Any, start: Any, n: int, max_seq: int, *, stream: Any = None) -> Any:
    """Move sequences ``0..n-1`` one position on; a sequence at ``max_seq - 1`` goes back to ``start``.

    Parameters
    ----------
    positions, start : cupy.ndarray
        int32, at least ``n`` elements; ``positions`` is updated in place.
    n : int
        Sequences.
    max_seq : int
        Positions of the cache.
    stream : cupy stream, object with ``__cuda_stream__``, or None

    Returns
    -------
    cupy.ndarray
        ``positions``.
    """
    _check_ints(positions, "positions", n)
    _check_ints(start, "start", n)
    _fn("advance_positions")((cdiv(n, 128),), (128,), (positions, start, np.int32(n), np.int32(max_seq)),
                             stream=as_cupy_stream(stream))
    return positions


# ---- float64 references -----------------------------------------------------------------------------


def reference_rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """float64 rotation of heads ``x`` (..., tokens, heads, head_dim) by their token's position."""
    x64 = dtypes.to_float64(x)
    half = x64.shape[-1] // 2
    angle = np.asarray(positions, np.float64)[:, None, None] * np.asarray(inv_freq, np.float64)
    c, s = np.cos(angle), np.sin(angle)
    x0, x1 = x64[..., :half], x64[..., half:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def reference_gqa_decode(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, positions: np.ndarray,
                         slots: np.ndarray, scale: float | None = None) -> np.ndarray:
    """float64 decode attention: q (batch, heads, head_dim) over keys ``0..positions[b]``.

    Returns
    -------
    numpy.ndarray
        (batch, heads, head_dim).
    """
    q64, k64, v64 = dtypes.to_float64(q), dtypes.to_float64(k_cache), dtypes.to_float64(v_cache)
    B, H, D = q64.shape
    group = H // k64.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.empty((B, H, D))
    for b in range(B):
        n = int(positions[b]) + 1
        for h in range(H):
            keys, values = k64[slots[b], h // group, :n], v64[slots[b], h // group, :n]
            s = keys @ q64[b, h] * scale
            p = np.exp(s - s.max())
            out[b, h] = p @ values / p.sum()
    return out


def reference_swiglu(gate_up: np.ndarray) -> np.ndarray:
    """float64 ``silu(gate) * up`` of ``[gate | up]``."""
    g64 = dtypes.to_float64(gate_up)
    gate, up = np.split(g64, 2, axis=-1)
    return gate / (1.0 + np.exp(-gate)) * up


def reference_bias_act(x: np.ndarray, bias: np.ndarray, act: str = "none") -> np.ndarray:
    """float64 ``act(x + bias)``."""
    from math import erf

    v = dtypes.to_float64(x) + dtypes.to_float64(bias)
    if act == "gelu":
        return 0.5 * v * (1.0 + np.vectorize(erf)(v / math.sqrt(2.0)))
    if act == "gelu_tanh":
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    if act == "tanh":
        return np.tanh(v)
    return v
