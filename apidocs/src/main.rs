//! `cargo run -p apidocs` writes docs/asyncapi.yaml and docs/openapi/*.json;
//! `cargo run -p apidocs -- --check` only says whether they are up to date
//! (exit 1 when not).

fn main() -> anyhow::Result<()> {
    let root = apidocs::root();
    if std::env::args().any(|a| a == "--check") {
        let stale = apidocs::drift(&root)?;
        for path in &stale {
            eprintln!("out of date: {}", path.display());
        }
        if !stale.is_empty() {
            eprintln!("run `cargo run -p apidocs` and commit the result");
            std::process::exit(1);
        }
        println!("API documents are up to date");
        return Ok(());
    }
    for (path, text) in apidocs::documents()? {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
