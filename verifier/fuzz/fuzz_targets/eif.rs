#![no_main]
//! An enclave image file: header, section table, sections, signature.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = eif::image::describe_reader(&mut std::io::Cursor::new(data), data.len() as u64, std::path::Path::new("fuzz.eif"), eif::DescribeOptions::default(), &mut |_| {});
});
