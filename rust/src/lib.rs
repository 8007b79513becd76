//! Engram Store engine.
//!
//! Pure-Rust modules, each usable and tested without Python:
//! - [`hash`]: bit-exact Engram n-gram hashing (the published reference's multiplicative-XOR heads);
//! - [`codec`]: row dtypes (float32, bfloat16, float16, fp8_e4m3, int8) and conversions;
//! - [`quant`]: quantized rows (FP8 E4M3 with E8M0 scales, int8 with float32 scales);
//! - [`init`]: the counter-based initializer that gives never-written rows their values;
//! - [`table`]: memory-mapped embedding tables, their file format, row checksums and the
//!   hot-row cache that serves a table larger than memory;
//! - [`trainable`]: trainable tables (rows, optimizer state, undo log) and pushes;
//! - [`keys`]: a request's keys, decoded once and checked against a table in constant time;
//! - [`journal`]: the push journal that commits pushes through a crash;
//! - [`optim`]: the server-side optimizers (SGD, Adagrad, row-wise Adagrad, Adam);
//! - [`checkpoint`]: row packs; [`disk`]: reserving disk before writing through a mapping;
//! - [`region`]: same-machine clients' shared buffers, mapped once and checked;
//! - [`wire`]: a lookup's answer written in the protocol's wire format, rows gathered once;
//! - [`crash_points`]: named points where tests kill the process; [`parallel`]: when a
//!   loop goes to the thread pool; [`error`]: the one error type.
//!
//! The `python` feature adds the PyO3 binding (`store._native`, in `py/`: tables, trainable
//! tables, hashing, and `Keys`, a request's keys decoded once), which only converts types,
//! releases the GIL around kernels and maps errors.

#[cfg(target_endian = "big")]
compile_error!("table files are little-endian and are read in place");

pub mod checkpoint;
pub mod codec;
pub mod crash_points;
pub mod disk;
pub mod error;
pub mod hash;
pub mod init;
pub mod journal;
pub mod keys;
pub mod optim;
pub mod parallel;
pub mod quant;
pub mod region;
pub mod table;
pub mod trainable;
pub mod wire;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
