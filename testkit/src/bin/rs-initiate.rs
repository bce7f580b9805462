//! `rs-initiate <mongo-url> <port>`: initiates a fresh single-node `mongod`
//! replica set and waits until it is primary (used by `scripts/infra.sh` when
//! a real mongod runs and no mongosh is around).

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(port)) = (args.next(), args.next().and_then(|p| p.parse().ok())) else {
        eprintln!("usage: rs-initiate <mongo-url> <port>");
        std::process::exit(2);
    };
    testkit::initiate_replica_set(&url, port);
}
