//! A file watched for changes in its content, by polling.
//!
//! The file is read again every [`POLL`] and compared with what was read
//! last, instead of being watched by inode: a Kubernetes ConfigMap or Secret
//! volume replaces its files by swapping a `..data` symlink, which inode
//! watches miss. Reading a few KB once a second costs nothing. The config
//! file (`app/reload.rs`) and the JWKS file of a `jwt:` listener are watched
//! this way.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a watched file is read again.
pub const POLL: Duration = Duration::from_secs(1);

/// A file and the content it had when last read.
#[derive(Debug)]
pub struct FilePoll {
    path: PathBuf,
    last: Option<Vec<u8>>,
}

impl FilePoll {
    /// Watch `path`, reading it now: only a change from this content counts.
    pub fn new(path: &Path) -> Self {
        FilePoll {
            last: std::fs::read(path).ok(),
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content read when the watch started or last changed; `None`
    /// when the file could not be read.
    pub fn content(&self) -> Option<&[u8]> {
        self.last.as_deref()
    }

    /// Read the file again now and take that as the last content, whether
    /// it changed or not (a reload asked for by a signal).
    pub fn reread(&mut self) -> Option<&[u8]> {
        self.last = std::fs::read(&self.path).ok();
        self.last.as_deref()
    }

    /// Read the file once: its new content when it is readable and
    /// differs from the last content, else `None`.
    pub fn changed(&mut self) -> Option<&[u8]> {
        let now = std::fs::read(&self.path).ok();
        if now.is_some() && now != self.last {
            self.last = now;
            return self.last.as_deref();
        }
        None
    }

    /// Wait until the content changes (checked every [`POLL`]), and return it.
    pub async fn next_change(&mut self) -> Vec<u8> {
        loop {
            tokio::time::sleep(POLL).await;
            if let Some(content) = self.changed() {
                return content.to_vec();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_once_and_an_unreadable_file_is_no_change() {
        let dir = std::env::temp_dir().join(format!("skiff-file-poll-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("watched");
        std::fs::write(&path, "one").unwrap();
        let mut w = FilePoll::new(&path);
        assert_eq!(w.content(), Some(&b"one"[..]));
        assert_eq!(w.changed(), None, "same content");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(w.changed(), Some(&b"two"[..]));
        assert_eq!(w.changed(), None, "reported once");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.changed(), None, "a missing file keeps the last content");
        assert_eq!(w.content(), Some(&b"two"[..]));
        std::fs::write(&path, "two").unwrap();
        assert_eq!(w.changed(), None, "back as it was: no change");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
