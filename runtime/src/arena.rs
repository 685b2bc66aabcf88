//! The one arena: every buffer a session needs (activations, KV cache,
//! logits, token history, sampler scratch, and the block buffers of batched
//! prompt processing) is carved from a caller-provided `&mut [u8]` whose
//! exact size the model reports up front (`Model::arena_bytes_for`).
//!
//! Every buffer and its size is listed in `sizes` below. Beyond the one-token
//! activations, the KV cache (f32, f16 or q8, per `SessionOptions::kv`) and the
//! token history, the batched path adds `B` rows of each activation buffer
//! (`B = SessionOptions::block_len()`, 0 when blocks are off: about
//! `B · (4·(3·dim + 2·kv_dim + 2·ffn + head_dim) + 1.125·max(dim, ffn))` bytes)
//! and, only with `SessionOptions::block_logits` (scoring every token, as
//! `bpb` does), `4 · B · vocab` bytes of block logits. On x86_64 blocks also
//! add a layer's keys stored by dimension (`4 · kv_dim · ld` bytes, `ld` =
//! `max_seq` rounded up to 16, plus 16), from which a block's queries score
//! (`Kernels::scores_by_dim`).

use crate::error::{Error, Result};
use crate::format::{align_up, ALIGN, Q8_GROUP};
use crate::kernels::{keys_by_dim_ld, KEYS_BY_DIM};
use crate::kv::{KvCache, KvType};
use crate::model::Model;
use crate::sampler::ProbIndex;
use crate::session::SessionOptions;

/// Byte offsets of each buffer (each 64-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_seq: usize,
    pub max_blocks: usize,
    pub max_vocab: usize,
    pub kv_dim: usize,
    pub head_dim: usize,
    pub kv: KvType,
    /// Tokens per block of the batched path (0: no block buffers).
    pub block: usize,
    /// Whether the block logits buffer exists.
    pub block_logits: bool,
    offsets: [usize; N_BUFFERS],
    sizes: [usize; N_BUFFERS],
    pub total: usize,
}

const N_BUFFERS: usize = 35;

/// Bytes of each buffer, in carving order.
fn sizes(model: &Model<'_>, opts: &SessionOptions) -> [usize; N_BUFFERS] {
    let max_seq = opts.max_seq;
    let c = model.config();
    let (dim, ffn, heads, hd) = (c.dim as usize, c.ffn_dim as usize, c.n_heads as usize, c.head_dim());
    let kv_dim = c.kv_dim();
    let kv = model.max_blocks() * max_seq * kv_dim;
    let vocab = model.max_vocab();
    let qmax = dim.max(ffn).div_ceil(Q8_GROUP) * Q8_GROUP;
    let b = opts.block_len();
    let bl = if opts.block_logits { b } else { 0 };
    let (kv8, kv16, kv32) = match opts.kv {
        KvType::F32 => (0, 0, kv),
        KvType::F16 => (0, kv, 0),
        KvType::Q8 => (kv, 0, 0),
    };
    // a q8 cache's scales: one per head of every cached key (value)
    let kv8_scales = kv8 / hd.max(1);
    // one layer's keys by dimension for the block's attention (x86_64 tables)
    let keys_t = if KEYS_BY_DIM && b > 0 { kv_dim * keys_by_dim_ld(max_seq) } else { 0 };
    [
        4 * dim,                                   // x      [dim] residual stream
        4 * dim,                                   // xb     [dim]
        4 * dim,                                   // xb2    [dim]
        4 * dim,                                   // q      [dim]
        4 * ffn,                                   // hb     [ffn]
        4 * ffn,                                   // hb2    [ffn]
        4 * heads * max_seq,                       // att    [heads, max_seq]
        4 * vocab,                                 // logits [vocab]
        4 * hd,                                    // rope   [head_dim] (cos, sin) pairs
        qmax,                                      // xq     [max(dim, ffn)] i8
        4 * (qmax / Q8_GROUP),                     // xs     [max(dim, ffn)/32]
        4 * kv32,                                  // key cache   [blocks, max_seq, kv_dim] f32
        4 * kv32,                                  // value cache [blocks, max_seq, kv_dim] f32
        4 * max_seq,                               // tokens [max_seq] u32
        core::mem::size_of::<ProbIndex>() * vocab, // sampler scratch [vocab]
        2 * kv16,                                  // key cache   [blocks, max_seq, kv_dim] f16
        2 * kv16,                                  // value cache [blocks, max_seq, kv_dim] f16
        4 * kv_dim,                                // k [kv_dim] this token's key before caching
        4 * kv_dim,                                // v [kv_dim]
        // block buffers of the batched path ([B, …] rows)
        4 * b * dim,               // bx    [B, dim] residual streams
        4 * b * dim,               // bxb   [B, dim]
        4 * b * dim,               // bq    [B, dim] (also the attention output projection)
        4 * b * kv_dim,            // bk    [B, kv_dim]
        4 * b * kv_dim,            // bv    [B, kv_dim]
        4 * b * ffn,               // bhb   [B, ffn]
        4 * b * ffn,               // bhb2  [B, ffn]
        4 * b * hd,                // brope [B, head_dim]
        b * qmax,                  // bxq   [B, max(dim, ffn)] i8
        4 * b * (qmax / Q8_GROUP), // bxs  [B, max(dim, ffn)/32]
        4 * bl * vocab,            // blogits [B, vocab] (only with block_logits)
        4 * keys_t,                // bkeys_t [kv_dim, ld] one layer's keys by dimension (blocks, x86_64)
        kv8,                       // key cache   [blocks, max_seq, kv_dim] i8
        kv8,                       // value cache [blocks, max_seq, kv_dim] i8
        4 * kv8_scales,            // key scales   [blocks, max_seq, kv_heads] f32
        4 * kv8_scales,            // value scales [blocks, max_seq, kv_heads] f32
    ]
}

impl Layout {
    pub fn new(model: &Model<'_>, opts: &SessionOptions) -> Self {
        let sizes = sizes(model, opts);
        let mut offsets = [0usize; N_BUFFERS];
        let mut at = 0;
        for (o, n) in offsets.iter_mut().zip(sizes) {
            *o = at;
            at = align_up(at + n);
        }
        Layout {
            max_seq: opts.max_seq,
            kv: opts.kv,
            block: opts.block_len(),
            block_logits: opts.block_logits,
            max_blocks: model.max_blocks(),
            max_vocab: model.max_vocab(),
            kv_dim: model.config().kv_dim(),
            head_dim: model.config().head_dim(),
            offsets,
            sizes,
            // + ALIGN: the caller's slice need not start aligned
            total: at + ALIGN,
        }
    }
}

/// Typed views into the arena for one session.
pub struct RunState<'s> {
    /// Positions the KV cache holds.
    pub max_seq: usize,
    pub x: &'s mut [f32],
    pub xb: &'s mut [f32],
    pub xb2: &'s mut [f32],
    pub q: &'s mut [f32],
    pub hb: &'s mut [f32],
    pub hb2: &'s mut [f32],
    pub att: &'s mut [f32],
    pub logits: &'s mut [f32],
    pub rope: &'s mut [f32],
    pub xq: &'s mut [i8],
    pub xs: &'s mut [f32],
    pub cache: KvCache<'s>,
    pub tokens: &'s mut [u32],
    pub scratch: &'s mut [ProbIndex],
    pub k: &'s mut [f32],
    pub v: &'s mut [f32],
    /// Block buffers (empty when the session runs one token at a time).
    pub block: BlockState<'s>,
}

/// The batched path's buffers: row `b` of each belongs to the block's token `b`.
pub struct BlockState<'s> {
    /// Tokens per block (0: no block buffers).
    pub len: usize,
    pub x: &'s mut [f32],
    pub xb: &'s mut [f32],
    pub q: &'s mut [f32],
    pub k: &'s mut [f32],
    pub v: &'s mut [f32],
    pub hb: &'s mut [f32],
    pub hb2: &'s mut [f32],
    pub rope: &'s mut [f32],
    pub xq: &'s mut [i8],
    pub xs: &'s mut [f32],
    /// `[len, vocab]` logits of every token of a block (empty unless `block_logits`).
    pub logits: &'s mut [f32],
    /// `[kv_dim, keys_by_dim_ld(max_seq)]`: a layer's cached keys stored by
    /// dimension, KV head `g` in rows `g·head_dim..` (empty without blocks
    /// or off x86_64; `forward::LayerKeys`).
    pub keys_t: &'s mut [f32],
}

/// Plain-old-data element types the arena may hold.
trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for i8 {}
impl Pod for u32 {}
impl Pod for u16 {}
impl Pod for ProbIndex {}

// The casts in `take` assume these layouts: no padding (every byte is part
// of a value) and an alignment the 64-byte carving satisfies.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<f32>() == 4 && size_of::<u32>() == 4 && size_of::<i8>() == 1 && size_of::<u16>() == 2);
    assert!(size_of::<ProbIndex>() == 8 && align_of::<ProbIndex>() == 4);
    assert!(ALIGN.is_multiple_of(align_of::<ProbIndex>()) && ALIGN.is_multiple_of(align_of::<f32>()));
};

/// Splits the next buffer (at `offset`, `bytes` long) off `rest`, which
/// begins at arena offset `*at`.
fn take<'s, T: Pod>(rest: &mut &'s mut [u8], at: &mut usize, offset: usize, bytes: usize) -> &'s mut [T] {
    let buf = core::mem::take(rest);
    let (_, tail) = buf.split_at_mut(offset - *at);
    let (mine, after) = tail.split_at_mut(bytes);
    *rest = after;
    *at = offset + bytes;
    assert_eq!(mine.as_ptr() as usize % core::mem::align_of::<T>(), 0);
    // SAFETY: `mine` is exclusively borrowed for 's and aligned for T
    // (asserted above: the arena start is 64-byte aligned and every offset is
    // a multiple of 64); it holds bytes/size_of::<T>() whole, initialised
    // elements, and every bit pattern is a valid T (f32, i8, u16, u32 and
    // ProbIndex = (f32, u32) have no invalid values or padding).
    unsafe { core::slice::from_raw_parts_mut(mine.as_mut_ptr() as *mut T, bytes / core::mem::size_of::<T>()) }
}

impl<'s> RunState<'s> {
    /// Carves `arena` per `layout`.
    pub fn carve(layout: &Layout, arena: &'s mut [u8]) -> Result<Self> {
        if arena.len() < layout.total {
            return Err(Error::ArenaTooSmall { needed: layout.total, got: arena.len() });
        }
        let skip = arena.as_ptr().align_offset(ALIGN);
        let (_, mut rest) = arena.split_at_mut(skip.min(ALIGN));
        let (o, s) = (layout.offsets, layout.sizes);
        let mut at = 0usize;
        let r = &mut rest;
        let a = &mut at;
        let (x, xb, xb2, q) =
            (take(r, a, o[0], s[0]), take(r, a, o[1], s[1]), take(r, a, o[2], s[2]), take(r, a, o[3], s[3]));
        let (hb, hb2, att, logits) =
            (take(r, a, o[4], s[4]), take(r, a, o[5], s[5]), take(r, a, o[6], s[6]), take(r, a, o[7], s[7]));
        let (rope, xq, xs) = (take(r, a, o[8], s[8]), take(r, a, o[9], s[9]), take(r, a, o[10], s[10]));
        let (k32, v32) = (take(r, a, o[11], s[11]), take(r, a, o[12], s[12]));
        let (tokens, scratch) = (take(r, a, o[13], s[13]), take(r, a, o[14], s[14]));
        let (k16, v16) = (take(r, a, o[15], s[15]), take(r, a, o[16], s[16]));
        let (k, v) = (take(r, a, o[17], s[17]), take(r, a, o[18], s[18]));
        let block = BlockState {
            len: layout.block,
            x: take(r, a, o[19], s[19]),
            xb: take(r, a, o[20], s[20]),
            q: take(r, a, o[21], s[21]),
            k: take(r, a, o[22], s[22]),
            v: take(r, a, o[23], s[23]),
            hb: take(r, a, o[24], s[24]),
            hb2: take(r, a, o[25], s[25]),
            rope: take(r, a, o[26], s[26]),
            xq: take(r, a, o[27], s[27]),
            xs: take(r, a, o[28], s[28]),
            logits: take(r, a, o[29], s[29]),
            keys_t: take(r, a, o[30], s[30]),
        };
        let (k8, v8) = (take(r, a, o[31], s[31]), take(r, a, o[32], s[32]));
        let (ks8, vs8) = (take(r, a, o[33], s[33]), take(r, a, o[34], s[34]));
        let cache = match layout.kv {
            KvType::F32 => KvCache::F32 { keys: k32, values: v32 },
            KvType::F16 => KvCache::F16 { keys: k16, values: v16 },
            KvType::Q8 => {
                KvCache::Q8 { keys: k8, values: v8, key_scales: ks8, value_scales: vs8, head_dim: layout.head_dim }
            }
        };
        Ok(RunState {
            max_seq: layout.max_seq,
            x,
            xb,
            xb2,
            q,
            hb,
            hb2,
            att,
            logits,
            rope,
            xq,
            xs,
            cache,
            tokens,
            scratch,
            k,
            v,
            block,
        })
    }
}
