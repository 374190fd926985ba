//! Man pages and shell completions, generated from the clap definitions so they never drift
//! from the real options (packaging/build-deb runs `sealfs generate-docs`).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes sealfs.1 and one page per subcommand (sealfs-mount.1, ...) into `man_dir`, and
/// completions for bash, zsh and fish into `completions_dir`.
pub fn generate(man_dir: &Path, completions_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(man_dir)?;
    std::fs::create_dir_all(completions_dir)?;
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), man_dir)
        .with_context(|| format!("writing man pages to {}", man_dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "sealfs", completions_dir)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}
