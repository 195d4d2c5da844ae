//! `pii-enclave-dangerous-dev`: **DANGEROUS, development only.** The enclave
//! service plus the development seal, root token and NSM (`host-proxy dev`,
//! tests). Built only with the `dangerous-dev` feature; never put it in an image.
#![forbid(unsafe_code)]

fn main() {
    pii_enclave::cli::main(pii_enclave::cli::Mode::DangerousDev)
}
