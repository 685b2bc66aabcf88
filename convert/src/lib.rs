//! edgelm-convert (in progress).

pub mod tokenizer_import;
