//! `waf-sync --from-topic fraud-signals [--apply]`: signals in, WAF block
//! lists out (the same as `host-proxy fraud waf-sync`). Run every 5 minutes.
#![forbid(unsafe_code)]

use clap::Parser;

/// Turn fraud signals into WAF block lists; dry run by default.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: pii_fraud::waf::sync::WafSyncArgs,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = pii_fraud::waf::sync::run(cli.args).await {
        eprintln!("waf-sync: {e}");
        std::process::exit(1);
    }
}
