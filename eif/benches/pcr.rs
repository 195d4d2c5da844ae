//! PCR computation throughput on a 256 MiB image against the machine's raw
//! SHA-384 throughput (the physical limit: every measured byte must go
//! through SHA-384 at least once), and against AWS's own reader.
//!
//! `cargo bench -p eif --bench pcr` (part of `just bench`).
use std::time::Instant;

use eif::build::{Bootstrap, BuildSpec};

const MIB: usize = 1 << 20;

fn fill(path: &std::path::Path, n: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = vec![0u8; n];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    std::fs::write(path, v).expect("write input");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rate(label: &str, bytes: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm the page cache and the code
    let secs: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let mbs = bytes as f64 / MIB as f64 / median(secs);
    println!("{label:58} {mbs:8.0} MiB/s");
    mbs
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    fill(&p("kernel"), 16 * MIB, 1);
    fill(&p("boot"), MIB, 2);
    fill(&p("app"), 239 * MIB, 3);
    let image = p("image.eif");
    let spec = BuildSpec {
        kernel: p("kernel"),
        cmdline: "console=ttyS0".into(),
        bootstrap: Bootstrap::Ramdisk(p("boot")),
        app: None,
        extra_ramdisks: vec![p("app")],
        signer: None,
        aarch64: false,
        memory_mib: 1024,
        cpus: 2,
        image_name: "bench".into(),
        image_version: "0".into(),
        kernel_version: "unknown".into(),
        source_date_epoch: 0,
    };
    eif::build::build(&spec, &image, &mut |_, _| {}).expect("build");
    let size = std::fs::metadata(&image).expect("stat").len() as usize;
    println!(
        "image: {:.1} MiB, {} cores",
        size as f64 / MIB as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let data = std::fs::read(&image).expect("read");
    let runs = 5;

    let raw = rate(
        "raw SHA-384, one pass over the bytes in memory (limit)",
        size,
        runs,
        || {
            std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &data));
        },
    );
    let pcrs = rate(
        "eif describe --no-digest (PCR0/1/2 + CRC, from file)",
        size,
        runs,
        || {
            eif::describe(
                &image,
                eif::DescribeOptions { file_digest: false },
                &mut |_| {},
            )
            .expect("describe");
        },
    );
    let full = rate(
        "eif describe (PCRs + whole-file SHA-384, from file)",
        size,
        runs,
        || {
            eif::describe(
                &image,
                eif::DescribeOptions { file_digest: true },
                &mut |_| {},
            )
            .expect("describe");
        },
    );
    let aws = rate(
        "aws-nitro-enclaves-image-format EifReader (PCRs + CRC)",
        size,
        3,
        || {
            let mut r = aws_nitro_enclaves_image_format::utils::eif_reader::EifReader::from_eif(
                image.display().to_string(),
            )
            .expect("EifReader");
            std::hint::black_box(r.get_measurements().expect("measure"));
        },
    );
    println!();
    println!(
        "PCRs vs raw SHA-384 limit:        {:.2}x ({:.0}%)",
        pcrs / raw,
        100.0 * pcrs / raw
    );
    println!("PCRs + file digest vs limit:      {:.2}x", full / raw);
    println!("PCRs vs AWS EifReader:            {:.2}x", pcrs / aws);
}
