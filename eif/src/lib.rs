//! Reproducible AWS Nitro Enclave images.
//!
//! * [`build`] — deterministic EIFs from a kernel, cmdline, nitro-cli's boot
//!   ramdisk and our application ramdisk ([`cpio`]), optionally signed (PCR8).
//! * [`image`] — read, check (structure, CRC, signature) and measure an EIF
//!   (PCR0/1/2/8) by streaming, the way `nitro-cli describe-eif` does.
//! * [`sign`] — the PCR0 signature section.
#![forbid(unsafe_code)]

pub mod build;
pub mod cpio;
pub mod image;
pub mod pcr;
pub mod sign;

pub use image::{describe, DescribeOptions, Description, EifError, Pcrs};
