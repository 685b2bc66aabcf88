//! Parsing and validating `.edgelm` bytes in place. Every length, offset,
//! shape and count is checked here, before anything else touches the data;
//! after `ModelFile::parse` succeeds, tensor views are in bounds and sized.

use super::checksum::xxh64;
use super::*;
use crate::error::{Error, Name, Result};

/// Whether `parse` verifies the trailing checksum. Skipping it saves one
/// pass over the file (useful on slow flash); structure is always validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyChecksum {
    Yes,
    /// Explicit opt-out: corrupt tensor *values* go unnoticed, corrupt structure does not.
    Skip,
}

/// A validated `.edgelm` file borrowed in place.
#[derive(Debug, Clone)]
pub struct ModelFile<'a> {
    pub meta: HeaderMeta<'a>,
    n_tensors: usize,
    /// postcard-encoded tensor entries (validated)
    table: &'a [u8],
    data: &'a [u8],
    pub checksum: u64,
    pub checksum_verified: bool,
    pub file_len: usize,
}

/// A tensor borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: [u32; MAX_DIMS],
    pub ndim: usize,
    pub bytes: &'a [u8],
}

/// Little-endian fields; `None` past the end (callers check lengths first).
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(at..)?.first_chunk()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*b.get(at..)?.first_chunk()?))
}

const DECODE: Error = Error::HeaderDecode("could not decode the header (truncated or corrupt)");

fn bad(name: &str, what: &'static str) -> Error {
    Error::BadTensor { name: Name::new(name), what }
}

impl<'a> ModelFile<'a> {
    /// Validates `bytes` as an `.edgelm` file and borrows it.
    pub fn parse(bytes: &'a [u8], verify: VerifyChecksum) -> Result<Self> {
        if cfg!(target_endian = "big") {
            return Err(Error::BigEndianHost);
        }
        let got = bytes.len() as u64;
        let min = (PREAMBLE_LEN + CHECKSUM_LEN) as u64;
        let short = Error::TooShort { needed: min, got };
        if got < min {
            return Err(short);
        }
        if bytes.first_chunk::<8>() != Some(&MAGIC) {
            return Err(Error::BadMagic);
        }
        let version = u32_at(bytes, 8).ok_or_else(|| short.clone())?;
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        if u32_at(bytes, 12) != Some(ENDIAN_MARK) {
            return Err(Error::WrongEndianness);
        }
        let header_len = u64_at(bytes, 16).ok_or_else(|| short.clone())?;
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge(header_len));
        }
        let header_len = header_len as usize;
        let data_len = u64_at(bytes, 24).ok_or_else(|| short.clone())?;
        let data_start = align_up(PREAMBLE_LEN + header_len);
        let declared = (data_start as u64)
            .checked_add(data_len)
            .and_then(|n| n.checked_add(CHECKSUM_LEN as u64))
            .ok_or(Error::HeaderDecode("data length overflows"))?;
        if got < declared {
            return Err(Error::TooShort { needed: declared, got });
        }
        if got > declared {
            return Err(Error::SizeMismatch { declared, got });
        }
        // got == declared ≥ CHECKSUM_LEN, so the split exists
        let (body, trailer) = bytes.split_last_chunk::<CHECKSUM_LEN>().ok_or_else(|| short.clone())?;
        let stored = u64::from_le_bytes(*trailer);
        let checksum_verified = verify == VerifyChecksum::Yes;
        if checksum_verified {
            let computed = xxh64(body, 0);
            if computed != stored {
                return Err(Error::ChecksumMismatch { stored, computed });
            }
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(Error::Misaligned);
        }

        // in range: declared (checked equal to the length) covers both
        let header = bytes.get(PREAMBLE_LEN..PREAMBLE_LEN + header_len).ok_or_else(|| short.clone())?;
        let (meta, rest): (HeaderMeta<'a>, &'a [u8]) = postcard::take_from_bytes(header).map_err(|_| DECODE)?;
        meta.config.validate()?;
        let (count, table): (u32, &'a [u8]) = postcard::take_from_bytes(rest).map_err(|_| DECODE)?;
        if count as usize > MAX_TENSORS {
            return Err(Error::TooManyTensors(count as u64, MAX_TENSORS));
        }
        let data = bytes.get(data_start..data_start + data_len as usize).ok_or(short)?;

        // Validate every entry once; the names must be strictly ascending,
        // which rules out duplicates in O(n).
        // Data must follow the table order without overlap (the writer lays
        // tensors out in name order), which also takes O(n).
        let mut cursor = table;
        let mut prev: Option<&str> = None;
        let mut prev_end = 0u64;
        for _ in 0..count {
            let (info, next): (TensorInfo<'a>, &'a [u8]) = postcard::take_from_bytes(cursor).map_err(|_| DECODE)?;
            cursor = next;
            validate_entry(&info, data.len() as u64, version)?;
            if let Some(p) = prev {
                if p >= info.name {
                    return Err(bad(info.name, "tensor table is not sorted by name (or has duplicates)"));
                }
            }
            if info.offset < prev_end {
                return Err(bad(info.name, "data overlaps the previous tensor's"));
            }
            prev = Some(info.name);
            // validate_entry checked that offset + len does not overflow
            prev_end = info.offset + info.len;
        }
        if !cursor.is_empty() {
            return Err(Error::HeaderDecode("trailing bytes after the tensor table"));
        }
        Ok(ModelFile {
            meta,
            n_tensors: count as usize,
            table,
            data,
            checksum: stored,
            checksum_verified,
            file_len: bytes.len(),
        })
    }

    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }

    /// All tensors, in table order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'a>> + '_ {
        let data = self.data;
        let mut cursor = self.table;
        (0..self.n_tensors).map_while(move |_| {
            let (info, next): (TensorInfo<'a>, &'a [u8]) = postcard::take_from_bytes(cursor).ok()?;
            cursor = next;
            view(&info, data)
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'a>> {
        self.tensors().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor(Name::new(name)))
    }

    /// Like [`Self::tensor`] but `None` when absent.
    pub fn get(&self, name: &str) -> Option<TensorView<'a>> {
        self.tensors().find(|t| t.name == name)
    }

    /// Total bytes of tensor data.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn validate_entry(info: &TensorInfo<'_>, data_len: u64, version: u32) -> Result<()> {
    let name = info.name;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(name, "name is empty or longer than 128 bytes"));
    }
    if info.shape.is_empty() {
        return Err(bad(name, "shape has no dimensions"));
    }
    let mut n: u64 = 1;
    for &d in info.shape.iter() {
        if d == 0 {
            return Err(bad(name, "shape has a zero dimension"));
        }
        n = n.checked_mul(d as u64).ok_or_else(|| bad(name, "element count overflows"))?;
    }
    let last = info.shape.last().copied().unwrap_or(0);
    if info.dtype == DType::Q8 && !(last as usize).is_multiple_of(Q8_GROUP) {
        return Err(bad(name, "q8 tensor's last dimension is not a multiple of 32"));
    }
    if info.dtype == DType::Q4 && !(last as usize).is_multiple_of(Q4_GROUP) {
        return Err(bad(name, "q4 tensor's last dimension is not a multiple of 32"));
    }
    if version < info.dtype.min_version() {
        return Err(bad(name, "dtype needs a newer format version than the file declares"));
    }
    let expected = info.dtype.byte_len(n).ok_or_else(|| bad(name, "byte length overflows"))?;
    if expected != info.len {
        return Err(bad(name, "byte length does not match dtype and shape"));
    }
    if !info.offset.is_multiple_of(ALIGN as u64) {
        return Err(bad(name, "offset is not 64-byte aligned"));
    }
    let end = info.offset.checked_add(info.len).ok_or_else(|| bad(name, "offset + length overflows"))?;
    if end > data_len {
        return Err(bad(name, "data lies past the end of the file"));
    }
    Ok(())
}

/// The view of a validated entry (`None` cannot happen after `parse`).
fn view<'a>(info: &TensorInfo<'a>, data: &'a [u8]) -> Option<TensorView<'a>> {
    let mut shape = [1u32; MAX_DIMS];
    for (s, &d) in shape.iter_mut().zip(info.shape.iter()) {
        *s = d;
    }
    let start = usize::try_from(info.offset).ok()?;
    let end = start.checked_add(usize::try_from(info.len).ok()?)?;
    Some(TensorView { name: info.name, dtype: info.dtype, shape, ndim: info.shape.len(), bytes: data.get(start..end)? })
}

// `cast` serves these element types; their sizes are the dtypes' byte widths.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<f32>() == 4 && size_of::<u32>() == 4 && size_of::<u16>() == 2 && size_of::<i8>() == 1);
};

/// Reinterprets little-endian bytes as `&[T]` in place.
fn cast<'a, T: Copy>(t: &TensorView<'a>) -> Result<&'a [T]> {
    let size = core::mem::size_of::<T>();
    if !(t.bytes.as_ptr() as usize).is_multiple_of(core::mem::align_of::<T>()) || !t.bytes.len().is_multiple_of(size) {
        return Err(Error::Misaligned);
    }
    // SAFETY: the pointer is aligned for T and the length is a whole number of
    // T (both checked above); T is a plain number type (f32/u32/u16/i8) for
    // which every bit pattern is valid; the host is little-endian like the
    // file (checked in `parse`); the borrow keeps the lifetime of the bytes.
    Ok(unsafe { core::slice::from_raw_parts(t.bytes.as_ptr() as *const T, t.bytes.len() / size) })
}

impl<'a> TensorView<'a> {
    pub fn shape(&self) -> &[u32] {
        self.shape.get(..self.ndim).unwrap_or(&self.shape)
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().map(|&d| d as usize).product()
    }

    fn expect(&self, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::WrongDType {
                name: Name::new(self.name),
                got: self.dtype.name(),
                expected: dtype.name(),
            });
        }
        Ok(())
    }

    pub fn f32s(&self) -> Result<&'a [f32]> {
        self.expect(DType::F32)?;
        cast(self)
    }

    /// Raw IEEE half-precision bits.
    pub fn f16_bits(&self) -> Result<&'a [u16]> {
        self.expect(DType::F16)?;
        cast(self)
    }

    pub fn u32s(&self) -> Result<&'a [u32]> {
        self.expect(DType::U32)?;
        cast(self)
    }

    pub fn u8s(&self) -> Result<&'a [u8]> {
        self.expect(DType::U8)?;
        Ok(self.bytes)
    }

    /// `(int8 values, f16 scale bits)`: one scale per 32 values.
    pub fn q8(&self) -> Result<(&'a [i8], &'a [u16])> {
        self.expect(DType::Q8)?;
        let n = self.numel();
        // (views made by `parse` always hold n values and n/32 scales;
        // `TensorView`'s fields are public, so check)
        let (qs, scales) = self
            .bytes
            .split_at_checked(n)
            .ok_or_else(|| bad(self.name, "byte length does not match dtype and shape"))?;
        let qs_view = TensorView { bytes: qs, ..*self };
        let sc_view = TensorView { bytes: scales, ..*self };
        Ok((cast(&qs_view)?, cast(&sc_view)?))
    }

    /// `(packed nibbles, f16 scale bits)`: `n / 2` bytes (16 per group of
    /// 32, layout in [`DType::Q4`]) and one scale per 32 values.
    pub fn q4(&self) -> Result<(&'a [u8], &'a [u16])> {
        self.expect(DType::Q4)?;
        let n = self.numel();
        let (qs, scales) = self
            .bytes
            .split_at_checked(n / 2)
            .ok_or_else(|| bad(self.name, "byte length does not match dtype and shape"))?;
        if scales.len() != n / Q4_GROUP * 2 || !n.is_multiple_of(Q4_GROUP) {
            return Err(bad(self.name, "byte length does not match dtype and shape"));
        }
        let sc_view = TensorView { bytes: scales, ..*self };
        Ok((qs, cast(&sc_view)?))
    }
}
