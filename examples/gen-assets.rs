//! Writes the man page and the shell completions, generated from the clap definition in
//! `src/cli.rs` so they cannot drift from `--help`:
//! `cargo run --example gen-assets -- OUTDIR` makes OUTDIR/sigrelay.1 and
//! OUTDIR/completions/{sigrelay.bash,_sigrelay,sigrelay.fish}. The Debian package
//! (`packaging/build-deb.sh`) ships them; tests/binary.rs checks they name every flag.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use sigrelay::cli::Cli;

/// Writes every asset into `dir` (created if missing) and returns the paths written.
pub fn generate(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    std::fs::create_dir_all(dir.join("completions"))?;

    let man = dir.join("sigrelay.1");
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    std::fs::write(&man, page)?;
    written.push(man);

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(
            shell,
            &mut Cli::command(),
            "sigrelay",
            dir.join("completions"),
        )?;
        written.push(path);
    }
    Ok(written)
}

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: cargo run --example gen-assets -- OUTDIR");
        return std::process::ExitCode::from(2);
    };
    match generate(Path::new(&dir)) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-assets: {}: {e}", Path::new(&dir).display());
            std::process::ExitCode::FAILURE
        }
    }
}
