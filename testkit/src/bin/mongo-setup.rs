//! `mongo-setup <mongo-url> <port> <mongod|secantus> [txn-lifetime-secs]`:
//! prepares a freshly started local MongoDB for foodchain (used by
//! `scripts/infra.sh`): initiates a `mongod` single-node replica set, then
//! lowers `transactionLifetimeLimitSeconds` (see `testkit::mongo::prepare`).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(port), Some(kind)) = (
        args.first(),
        args.get(1).and_then(|p| p.parse().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: mongo-setup <mongo-url> <port> <mongod|secantus> [txn-lifetime-secs]");
        std::process::exit(2);
    };
    let lifetime = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    testkit::mongo::prepare(url, port, kind == "mongod", lifetime).await;
}
