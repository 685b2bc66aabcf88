//! The one arena: every buffer a session needs (activations, KV cache,
//! logits, token history, sampler scratch) is carved from a caller-provided
//! `&mut [u8]` whose exact size the model reports up front.

use crate::error::{Error, Result};
use crate::format::{align_up, ALIGN, Q8_GROUP};
use crate::model::Model;
use crate::sampler::ProbIndex;

/// Byte offsets of each buffer (each 64-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub max_seq: usize,
    pub max_blocks: usize,
    pub max_vocab: usize,
    pub kv_dim: usize,
    offsets: [usize; N_BUFFERS],
    sizes: [usize; N_BUFFERS],
    pub total: usize,
}

const N_BUFFERS: usize = 15;

/// Bytes of each buffer, in carving order.
fn sizes(model: &Model<'_>, max_seq: usize) -> [usize; N_BUFFERS] {
    let c = model.config();
    let (dim, ffn, heads, hd) = (c.dim as usize, c.ffn_dim as usize, c.n_heads as usize, c.head_dim());
    let kv = model.max_blocks() * max_seq * c.kv_dim();
    let vocab = model.max_vocab();
    let qmax = dim.max(ffn).div_ceil(Q8_GROUP) * Q8_GROUP;
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
        4 * kv,                                    // key cache   [blocks, max_seq, kv_dim]
        4 * kv,                                    // value cache [blocks, max_seq, kv_dim]
        4 * max_seq,                               // tokens [max_seq] u32
        core::mem::size_of::<ProbIndex>() * vocab, // sampler scratch [vocab]
    ]
}

impl Layout {
    pub fn new(model: &Model<'_>, max_seq: usize) -> Self {
        let sizes = sizes(model, max_seq);
        let mut offsets = [0usize; N_BUFFERS];
        let mut at = 0;
        for (o, n) in offsets.iter_mut().zip(sizes) {
            *o = at;
            at = align_up(at + n);
        }
        Layout {
            max_seq,
            max_blocks: model.max_blocks(),
            max_vocab: model.max_vocab(),
            kv_dim: model.config().kv_dim(),
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
    pub key_cache: &'s mut [f32],
    pub value_cache: &'s mut [f32],
    pub tokens: &'s mut [u32],
    pub scratch: &'s mut [ProbIndex],
}

/// Plain-old-data element types the arena may hold.
trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for i8 {}
impl Pod for u32 {}
impl Pod for ProbIndex {}

// The casts in `take` assume these layouts: no padding (every byte is part
// of a value) and an alignment the 64-byte carving satisfies.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<f32>() == 4 && size_of::<u32>() == 4 && size_of::<i8>() == 1);
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
    // elements, and every bit pattern is a valid T (f32, i8, u32 and
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
        Ok(RunState {
            max_seq: layout.max_seq,
            x: take(r, a, o[0], s[0]),
            xb: take(r, a, o[1], s[1]),
            xb2: take(r, a, o[2], s[2]),
            q: take(r, a, o[3], s[3]),
            hb: take(r, a, o[4], s[4]),
            hb2: take(r, a, o[5], s[5]),
            att: take(r, a, o[6], s[6]),
            logits: take(r, a, o[7], s[7]),
            rope: take(r, a, o[8], s[8]),
            xq: take(r, a, o[9], s[9]),
            xs: take(r, a, o[10], s[10]),
            key_cache: take(r, a, o[11], s[11]),
            value_cache: take(r, a, o[12], s[12]),
            tokens: take(r, a, o[13], s[13]),
            scratch: take(r, a, o[14], s[14]),
        })
    }
}
