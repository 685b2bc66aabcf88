//! Checkpoint weights: safetensors files read with the `safetensors` crate
//! (candle is only needed for GGUF). Tensors stay in their stored dtype until
//! [`StoredTensor::to_f32`] asks for them.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// One tensor as stored: dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl StoredTensor {
    pub fn dims(&self) -> &[usize] {
        &self.shape
    }

    /// The values as f32 (from f32, f16, bf16 or f64); other dtypes are refused.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            Dtype::F32 => d.as_chunks::<4>().0.iter().map(|&b| f32::from_le_bytes(b)).collect(),
            Dtype::F16 => d.as_chunks::<2>().0.iter().map(|&b| half::f16::from_le_bytes(b).to_f32()).collect(),
            Dtype::BF16 => d.as_chunks::<2>().0.iter().map(|&b| half::bf16::from_le_bytes(b).to_f32()).collect(),
            Dtype::F64 => d.as_chunks::<8>().0.iter().map(|&b| f64::from_le_bytes(b) as f32).collect(),
            other => return Err(Error::UnsupportedTensorType { name: name.into(), dtype: format!("{other:?}") }),
        })
    }
}

/// Every tensor of one safetensors file, by name.
pub fn load(path: &Path) -> Result<HashMap<String, StoredTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Safetensors(format!("{}: not a readable safetensors file (truncated or corrupt?): {e}", path.display()))
    })?;
    Ok(st
        .iter()
        .map(|(name, v)| {
            (name.to_string(), StoredTensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        })
        .collect())
}
