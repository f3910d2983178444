//! Writes every room script as `RedisStore` sends it to Redis (the prelude functions it uses,
//! then the operation) into a directory, one `<name>.lua` each, for
//! `queue-core/benches/script_cost.py`.
//!
//! `cargo run -p queue-core --example scripts -- DIR`

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: scripts DIR");
        std::process::exit(2);
    };
    std::fs::create_dir_all(&dir)?;
    for (name, text) in queue_core::store::redis::script_texts() {
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.lua")), text)?;
    }
    Ok(())
}
