//! Which local files statements may read and write: anywhere (an embedded engine or the shell,
//! where the user owns the machine), or only under directories the configuration names (a
//! server, where whoever connects must not reach the server's own files). Every statement that
//! names a file — `COPY ... TO`, `CREATE EXTERNAL TABLE ... LOCATION`, the filesystem
//! connector's `path` — is checked, and so is each stored definition when it is restored.

use std::path::{Component, Path, PathBuf};

use crate::{FreshetError, Result};

/// The directories statements may touch files in.
#[derive(Debug, Clone, Default)]
pub(crate) enum FileAccess {
    /// Any file the process can reach.
    #[default]
    Anywhere,
    /// Files under these directories (canonical: symbolic links resolved).
    Under(Vec<PathBuf>),
}

impl FileAccess {
    /// Access under `directories`, which must exist.
    pub(crate) fn under(directories: impl IntoIterator<Item = PathBuf>) -> Result<Self> {
        let mut canonical = Vec::new();
        for directory in directories {
            let resolved = directory.canonicalize().map_err(|e| {
                FreshetError::InvalidStatement(format!("allowed directory {}: {e}", directory.display()))
            })?;
            if !resolved.is_dir() {
                return Err(FreshetError::InvalidStatement(format!(
                    "allowed directory {}: not a directory",
                    directory.display()
                )));
            }
            canonical.push(resolved);
        }
        Ok(FileAccess::Under(canonical))
    }

    /// Whether a statement may use `location` (a path or a `file://` URL) for `what`.
    pub(crate) fn check(&self, what: &str, location: &str) -> Result<()> {
        let FileAccess::Under(allowed) = self else {
            return Ok(());
        };
        let refuse = || FreshetError::FileNotAllowed {
            what: what.into(),
            path: location.into(),
            allowed: if allowed.is_empty() {
                "none are allowed; a server allows directories with server.allowed-paths".into()
            } else {
                allowed
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        };
        let path = match location.strip_prefix("file://") {
            Some(path) => path,
            // Other schemes (s3://, http://) reach beyond the machine: not a directory one allows.
            None if location.contains("://") => return Err(refuse()),
            None => location,
        };
        match resolve(Path::new(path)) {
            Some(resolved) if allowed.iter().any(|d| resolved.starts_with(d)) => Ok(()),
            _ => Err(refuse()),
        }
    }
}

/// `path` made absolute with symbolic links resolved as far as it exists; the part that does
/// not exist yet (a file a sink will write) is appended as written, and may not climb (`..`).
fn resolve(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(resolved) = existing.canonicalize() {
            let mut resolved = resolved;
            for component in missing.iter().rev() {
                resolved.push(component);
            }
            return Some(resolved);
        }
        let name = existing.file_name()?;
        missing.push(name.to_os_string());
        existing = existing.parent()?;
        if matches!(existing.components().next_back(), Some(Component::ParentDir)) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_the_allowed_directories() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("data");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("x.json"), "{}").unwrap();
        let access = FileAccess::under([allowed.clone()]).unwrap();
        let inside = allowed.join("x.json").display().to_string();
        assert!(access.check("file", &inside).is_ok());
        assert!(access.check("file", &format!("file://{inside}")).is_ok());
        // Not there yet (a sink's directory): checked by where it would be.
        assert!(
            access
                .check("file", &allowed.join("out/part.csv").display().to_string())
                .is_ok()
        );
        let climbing = format!("{}/../secret", allowed.display());
        assert!(access.check("file", &climbing).is_err());
        assert!(
            access
                .check("file", &format!("{}/../data-not/x", allowed.display()))
                .is_err()
        );
        assert!(access.check("file", "/etc/passwd").is_err());
        assert!(access.check("file", "s3://bucket/x").is_err());
        // A link inside pointing outside leads outside.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path(), allowed.join("up")).unwrap();
            assert!(
                access
                    .check("file", &allowed.join("up/y").display().to_string())
                    .is_err()
            );
        }
        assert!(FileAccess::Anywhere.check("file", "/etc/passwd").is_ok());
        let none = FileAccess::under([])
            .unwrap()
            .check("COPY target", &inside)
            .unwrap_err();
        assert!(none.to_string().contains("server.allowed-paths"), "{none}");
    }
}
