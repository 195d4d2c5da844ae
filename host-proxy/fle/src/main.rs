//! `pii-fle`: field-level encryption for PostgreSQL through Transit.

#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() {
    let args = match pii_fle::config::with_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pii-fle: {e}");
            std::process::exit(2);
        }
    };
    let cli = pii_fle::cli::Cli::parse_from(args);
    let filter = tracing_subscriber::EnvFilter::try_from_env("PII_FLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pii-fle: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(pii_fle::cli::run(cli.cmd)) {
        tracing::error!(error = %e, "pii-fle failed");
        eprintln!("pii-fle: {e}");
        std::process::exit(e.exit_code());
    }
}
