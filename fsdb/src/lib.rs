//! fsdb: tandem's persistence. Memory-mapped partition logs and immutable chunk files.
pub mod codec;
