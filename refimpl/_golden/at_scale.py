"""Generated golden cases at the sizes kernels run at: tile boundaries and long sequences.

Kernels tile their work in blocks of 64 or 128 rows and head dimensions of 64, 128 or 256; the
bugs of a tiled kernel (a dropped or doubled last tile, a mask off by one at a tile edge, a
state not carried across a chunk) show only when a size is *not* a multiple of the tile, and
round-off that grows with the length shows only at long lengths. These cases are too large to
commit: each is declared by a seed and the sizes of :func:`refimpl.oracle.random_inputs` (the
``generated`` record), and the vectors store only a summary (see :func:`refimpl.oracle.export`).
Chapter 15 (§15.5) uses the same generator.
"""

from ._base import generated

FUNCTIONS: list = []

CASES = [
    # softmax attention: N, M not multiples of 64/128, head dims 64, 128, 256
    generated("attention.softmax_attention/tile_N65_d64_causal", 1701, "N = 65 = 64 + 1, causal: one row past a tile",
              N=65, d=64, causal=True),
    generated("attention.softmax_attention/tile_N127_M129_d128", 1702,
              "cross-attention N = 127, M = 129 around a tile of 128, head dim 128", N=127, M=129, d=128),
    generated("attention.softmax_attention/tile_N257_d256_causal", 1703, "N = 257, head dim 256, causal",
              N=257, d=256, causal=True),
    generated("attention.softmax_attention/long_N2049_d128_causal", 1704,
              "a long causal sequence, N = 2049 = 16·128 + 1, head dim 128", N=2049, d=128, causal=True),
    generated("attention.flash_attention/tile_N129_d128_causal", 1705,
              "FlashAttention with 64 × 64 tiles, N = 129 (two full tiles and one row); intermediate: the log-sum-exp",
              intermediates=True, N=129, d=128, causal=True),
    generated("attention.flash_attention/tile_N255_M63_d64", 1706,
              "N = 255 queries, M = 63 keys: every tile is partial in one direction; intermediate: the log-sum-exp",
              intermediates=True, N=255, M=63, d=64),
    generated("attention.softmax_attention_vjp/tile_N129_d64_causal", 1707,
              "the backward pass at N = 129 (two blocks of 64 query rows and one row), causal", N=129, d=64, causal=True),
    generated("attention.softmax_attention_vjp/long_N1025_d128", 1708,
              "the backward pass at N = 1025, head dim 128", N=1025, d=128),
    # linear attention and the selective scan: long sequences
    generated("random_features.linear_attention/long_N8193_causal", 1709,
              "causal linear attention over N = 8193 steps (the prefix sums' round-off grows with N)", N=8193, d=16),
    generated("ssm.selective_scan/long_L4097_zoh", 1710, "exact ZOH over L = 4097 steps, Mamba's initialization",
              L=4097, d_in=4, n=16, discretization="zoh"),
    generated("ssm.selective_scan/long_L8192_mamba", 1711, "Mamba's discretization over L = 8192 steps",
              L=8192, d_in=4, n=16),
    # the modern linear recurrences: long sequences, lengths not multiples of the chunk
    generated("linear_rnn.ssd/long_L4097_chunk64", 1712,
              "Mamba-2's SSD over L = 4097 = 64·64 + 1 steps, 4 heads in 2 groups", L=4097, H=4, G=2, P=16, N=16),
    generated("linear_rnn.gated_linear_attention/long_L2049_per_channel", 1713,
              "GLA with per-channel gates over L = 2049 steps, d_k = d_v = 64", L=2049, dk=64, dv=64),
    generated("linear_rnn.retention/long_L2049", 1714, "retention over L = 2049 steps, 4 heads with RetNet's decays",
              L=2049, H=4, dk=32, dv=32),
    generated("linear_rnn.delta_rule/long_L2049_gated", 1715,
              "Gated DeltaNet over L = 2049 steps (chunks of 64: 32 full chunks and one step)", L=2049, dk=32, dv=32,
              gated=True),
    # the backward passes of the linear recurrences at tile boundaries: one step past two chunks of 64, heads of 64
    generated("linear_rnn.gated_linear_attention_vjp/tile_L129_d64", 1716,
              "GLA's backward pass, per-channel gates, L = 129 = 2·64 + 1, d_k = d_v = 64, initial and final states",
              L=129, dk=64, dv=64, states=True),
    generated("linear_rnn.retention_vjp/tile_L129_d64", 1717,
              "retention's backward pass, L = 129, two heads of 64, initial and final states", L=129, H=2, dk=64, dv=64,
              states=True),
    generated("linear_rnn.ssd_vjp/tile_L130_P64_N64", 1718,
              "SSD's backward pass, L = 130 = 2·64 + 2, 4 heads of 64 in 2 groups, state size 64, initial and final "
              "states", L=130, H=4, G=2, P=64, N=64, states=True),
    generated("linear_rnn.delta_rule_vjp/tile_L129_d64_gated", 1719,
              "Gated DeltaNet's backward pass, L = 129, d_k = d_v = 64, initial and final states", L=129, dk=64, dv=64,
              gated=True, states=True),
    # the interfaces of fla and mamba_ssm at their kernels' tiles: fla's chunks of 64 (T = 130: two full chunks and
    # a partial one; V = 128: two value tiles of 64), mamba_ssm's chunk_size 64 with head dim and state size 64;
    # packed sequences whose boundaries fall inside chunks; the selective scan past its CUDA kernel's 2048-step chunk
    generated("linear_rnn.chunk_gla/tile_T130_K64_V128", 1720,
              "chunk_gla: T = 130, K = 64, V = 128, 2 sequences × 2 heads, initial and final states",
              batch=2, L=130, H=2, dk=64, dv=128, states=True),
    generated("linear_rnn.chunk_gla/varlen_100_37_129", 1721,
              "chunk_gla on three packed sequences of 100, 37 and 129 steps (cu_seqlens: boundaries inside chunks), "
              "K = V = 64, initial and final states per sequence", seqlens=[100, 37, 129], H=2, dk=64, dv=64, states=True),
    generated("linear_rnn.chunk_gla_vjp/tile_T129_K64", 1722,
              "chunk_gla's backward pass: T = 129, K = V = 64, 2 heads, initial state and the final state's cotangent",
              L=129, H=2, dk=64, dv=64, states=True),
    generated("linear_rnn.chunk_simple_gla/tile_T130", 1723, "chunk_simple_gla: T = 130, K = V = 64, 2 heads, states",
              L=130, H=2, dk=64, dv=64, states=True),
    generated("linear_rnn.chunk_simple_gla_vjp/tile_T130", 1724,
              "chunk_simple_gla's backward pass: T = 130, K = V = 64, 2 heads, states", L=130, H=2, dk=64, dv=64,
              states=True),
    generated("linear_rnn.chunk_delta_rule/tile_T130", 1725,
              "chunk_delta_rule (q, k normalized in the kernel): T = 130, K = V = 64, 2 heads, states", L=130, H=2, dk=64,
              dv=64, states=True),
    generated("linear_rnn.chunk_delta_rule_vjp/tile_T129", 1726,
              "chunk_delta_rule's backward pass: T = 129, K = V = 64, 2 heads, states", L=129, H=2, dk=64, dv=64,
              states=True),
    generated("linear_rnn.chunk_gated_delta_rule/tile_T130", 1727,
              "chunk_gated_delta_rule: T = 130, K = V = 64, 2 heads, states", L=130, H=2, dk=64, dv=64, states=True),
    generated("linear_rnn.chunk_gated_delta_rule_vjp/varlen_100_37_129", 1728,
              "chunk_gated_delta_rule's backward pass on three packed sequences of 100, 37 and 129 steps, K = V = 64, "
              "states per sequence", seqlens=[100, 37, 129], H=2, dk=64, dv=64, states=True),
    generated("linear_rnn.mamba_chunk_scan_combined/tile_T130_P64_N64", 1729,
              "mamba_chunk_scan_combined: seqlen 130 with chunk_size 64, 4 heads of 64 in 2 groups, dstate 64, D, z, "
              "dt_bias with dt_softplus, initial and final states", L=130, H=4, G=2, P=64, N=64, chunk_size=64,
              gated=True, states=True),
    generated("linear_rnn.mamba_chunk_scan_combined_vjp/tile_T129_P64_N64", 1730,
              "mamba_chunk_scan_combined's backward pass: seqlen 129, chunk_size 64, 4 heads of 64 in 2 groups, dstate "
              "64, D, z, dt_bias, states", L=129, H=4, G=2, P=64, N=64, chunk_size=64, gated=True, states=True),
    generated("linear_rnn.mamba_chunk_scan_combined/seq_idx_100_37_129", 1731,
              "mamba_chunk_scan_combined on three packed sequences of 100, 37 and 129 steps (seq_idx; boundaries inside "
              "chunks of 64), 2 heads of 32, dstate 16", seqlens=[100, 37, 129], H=2, P=32, N=16, chunk_size=64),
    generated("ssm.selective_scan_fn/long_L2049_gated", 1732,
              "selective_scan_fn over seqlen 2049, one step past the 2048-step chunk of Mamba's CUDA scan, with z, "
              "2 sequences", L=2049, d_in=8, n=16, batch=2, gated=True),
    generated("ssm.selective_scan_fn_vjp/long_L2049_gated", 1733,
              "selective_scan_fn's backward pass over seqlen 2049 (past the 2048-step chunk), with z", L=2049, d_in=8,
              n=16, gated=True),
    # FlashAttention-2's official interfaces: grouped-query heads, bottom-right alignment, windows, ALiBi, packing
    generated("attention.flash_attn_func/gqa_N65_M80_window_alibi", 1791,
              "flash_attn_func: 4 query heads on 2 key/value heads, seqlen_q = 65 < seqlen_k = 80 (bottom-right causal), "
              "window_size (16, -1), ALiBi, soft cap 20", batch=2, seqlen_q=65, seqlen_k=80, nheads=4, nheads_k=2,
              headdim=32, causal=True, window_size=[16, -1], alibi=True, softcap=20.0),
    generated("attention.flash_attn_varlen_func/packed_100_37_129", 1792,
              "flash_attn_varlen_func: three packed sequences of 100, 37 and 129 steps, causal, grouped-query heads",
              seqlens_q=[100, 37, 129], nheads=4, nheads_k=1, headdim=64, causal=True),
    generated("attention.flash_attn_func_vjp/N129_window", 1793,
              "flash_attn_func's backward pass at seqlen 129 with an asymmetric window (32, 8)", batch=1, seqlen_q=129,
              nheads=2, headdim=64, window_size=[32, 8]),
    generated("attention.flash_attn_varlen_func_vjp/packed_kv_cache", 1794,
              "flash_attn_varlen_func's backward pass, packed sequences with longer keys (a KV cache per sequence), causal",
              seqlens_q=[33, 64, 5], seqlens_k=[40, 64, 70], nheads=2, headdim=64, causal=True),
    generated("attention.flash_attn_func/tile_N257_d128_causal", 1795,
              "flash_attn_func at seqlen 257 (two tiles of 128 and one row), head dim 128, causal", batch=1,
              seqlen_q=257, nheads=2, headdim=128, causal=True),
    generated("attention.flash_attn_func/tile_N257_M200_d128", 1797,
              "flash_attn_func without a causal mask, seqlen_q 257 and seqlen_k 200: the last key block of 128 is "
              "partial (its padding must be masked), head dim 128", batch=1, seqlen_q=257, seqlen_k=200, nheads=2,
              headdim=128),
    generated("attention.flash_attn_func/causal_N65_M80", 1798,
              "flash_attn_func, causal with seqlen_q 65 < seqlen_k 80 and no other option: the mask aligned to the "
              "bottom right (query i sees keys j <= i + 15)", batch=1, seqlen_q=65, seqlen_k=80, nheads=2, headdim=64,
              causal=True),
    generated("attention.flash_attn_func_vjp/tile_N200_M257_d64", 1799,
              "flash_attn_func's backward pass without a causal mask, seqlen_q 200, seqlen_k 257: partial query and key "
              "blocks", batch=1, seqlen_q=200, seqlen_k=257, nheads=2, headdim=64),
    generated("attention.flash_attn_func_vjp/tile_N257_d128_causal", 1796,
              "flash_attn_func's backward pass at seqlen 257, head dim 128, causal", batch=1, seqlen_q=257, nheads=2,
              headdim=128, causal=True),
]
