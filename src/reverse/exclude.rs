//! `--exclude PATTERN`: paths left out of the reverse view, in gitignore syntax (the `ignore`
//! crate's matcher, as ripgrep uses): `*.tmp` anywhere, `/cache` only at the top, `build/`
//! only directories, `!keep.tmp` to take something back. An excluded directory hides
//! everything below it.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::volume::{Result, VolumeError};

pub struct Excludes {
    matcher: Option<Gitignore>,
}

impl Excludes {
    pub fn none() -> Self {
        Excludes { matcher: None }
    }

    pub fn new(patterns: &[String]) -> Result<Self> {
        if patterns.is_empty() {
            return Ok(Self::none());
        }
        // Matching is on paths relative to the plaintext root, so the root given here is "".
        let mut builder = GitignoreBuilder::new("");
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|e| VolumeError::Usage(format!("--exclude {pattern:?}: {e}")))?;
        }
        let matcher = builder
            .build()
            .map_err(|e| VolumeError::Usage(format!("--exclude: {e}")))?;
        Ok(Excludes {
            matcher: Some(matcher),
        })
    }

    /// Whether `relative` (below the plaintext root, never empty) is left out.
    pub fn excludes(&self, relative: &Path, is_dir: bool) -> bool {
        match &self.matcher {
            None => false,
            Some(m) => m.matched_path_or_any_parents(relative, is_dir).is_ignore(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics() {
        let ex = Excludes::new(&[
            "*.tmp".into(),
            "/cache".into(),
            "build/".into(),
            "!keep.tmp".into(),
        ])
        .unwrap();
        assert!(ex.excludes(Path::new("a.tmp"), false));
        assert!(ex.excludes(Path::new("deep/down/a.tmp"), false));
        assert!(!ex.excludes(Path::new("deep/keep.tmp"), false));
        assert!(ex.excludes(Path::new("cache"), true));
        assert!(
            ex.excludes(Path::new("cache/x"), false),
            "below an excluded dir"
        );
        assert!(
            !ex.excludes(Path::new("sub/cache"), true),
            "anchored at the root"
        );
        assert!(ex.excludes(Path::new("x/build"), true));
        assert!(
            !ex.excludes(Path::new("x/build"), false),
            "directories only"
        );
        assert!(!ex.excludes(Path::new("a.txt"), false));
        assert!(!Excludes::none().excludes(Path::new("a.tmp"), false));
    }
}
