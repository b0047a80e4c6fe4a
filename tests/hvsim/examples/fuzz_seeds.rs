//! Write the seed corpora of the fuzz targets (`fuzz/`), built from code:
//! `cargo run -p hvsim --example fuzz_seeds -- fuzz/corpus` makes
//! `fuzz/corpus/decoder_bytes/seed-NNN` and `fuzz/corpus/decoder_ops/seed-NNN`.

use std::path::PathBuf;

use hvsim::fuzzops::{bytes_seeds, ops_seeds};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    for (target, seeds) in [("decoder_bytes", bytes_seeds()), ("decoder_ops", ops_seeds())] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
