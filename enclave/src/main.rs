//! `pii-enclave`: the process that runs inside the Nitro Enclave. This binary
//! has no development switches, whatever features its library was built with.
#![forbid(unsafe_code)]

fn main() {
    pii_enclave::cli::main(pii_enclave::cli::Mode::Production)
}
