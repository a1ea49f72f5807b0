//! Noticing that files changed: the poller behind the config's hot reload
//! and the re-reading of TLS certificates and keys.
//!
//! Files are polled by content, not watched by inode: Kubernetes ConfigMap
//! and Secret volumes (and the CSI drivers that write SVIDs) replace files by
//! swapping a `..data` symlink, which inode watches miss. Reading a few KB
//! once a second costs nothing, and comparing contents rather than mtimes
//! sees a swap whatever timestamps the new files carry.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the files are read, unless [`FileWatch::every`] says otherwise.
pub const POLL: Duration = Duration::from_secs(1);

/// A set of files and the contents last seen of each.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    every: Duration,
}

impl FileWatch {
    /// Watch `paths`, taking what they hold now as seen.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let files = paths
            .into_iter()
            .map(|p| {
                let now = std::fs::read(&p).ok();
                (p, now)
            })
            .collect();
        FileWatch { files, every: POLL }
    }

    /// Poll every `every` instead of every second (tests).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// The files watched.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Take what the files hold now as seen, e.g. after a reload that had
    /// another cause (SIGHUP), so that it is not noticed a second time.
    pub fn mark_seen(&mut self) {
        for (p, last) in &mut self.files {
            *last = std::fs::read(p).ok();
        }
    }

    /// Read the files once: the ones whose content differs from what was
    /// last seen, now taken as seen. A file that cannot be read (missing
    /// for a moment while a writer swaps it) is no change: it is noticed
    /// once it is back with new content.
    pub fn check(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for (p, last) in &mut self.files {
            let now = std::fs::read(&*p).ok();
            if now.is_some() && now != *last {
                *last = now;
                changed.push(p.clone());
            }
        }
        changed
    }

    /// Wait until some file changed; the ones that did. Pending forever
    /// when no file is watched. Cancel-safe: dropped while waiting, nothing
    /// seen is lost.
    pub async fn changed(&mut self) -> Vec<PathBuf> {
        if self.files.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.every).await;
            let changed = self.check();
            if !changed.is_empty() {
                return changed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-watch-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sees_new_content_not_rewrites_of_the_same() {
        let dir = scratch("content");
        let f = dir.join("a");
        std::fs::write(&f, "one").unwrap();
        let mut w = FileWatch::new([f.clone()]);
        assert!(w.check().is_empty());
        std::fs::write(&f, "one").unwrap();
        assert!(w.check().is_empty(), "same bytes written again");
        std::fs::write(&f, "two").unwrap();
        assert_eq!(w.check(), vec![f.clone()]);
        assert!(w.check().is_empty(), "seen once");
        std::fs::remove_file(&f).unwrap();
        assert!(w.check().is_empty(), "a missing file is no change");
        std::fs::write(&f, "two").unwrap();
        assert!(w.check().is_empty(), "back as it was");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The way kubelet updates a Secret volume: new files in a new folder,
    /// then one rename swaps the `..data` symlink the files point through.
    #[cfg(unix)]
    #[test]
    fn sees_a_symlink_swap_of_several_files() {
        use std::os::unix::fs::symlink;
        let dir = scratch("swap");
        for (gen, text) in [("v1", "old"), ("v2", "new")] {
            std::fs::create_dir(dir.join(gen)).unwrap();
            std::fs::write(dir.join(gen).join("cert.pem"), format!("{text} cert")).unwrap();
            std::fs::write(dir.join(gen).join("key.pem"), format!("{text} key")).unwrap();
        }
        symlink("v1", dir.join("..data")).unwrap();
        for f in ["cert.pem", "key.pem"] {
            symlink(Path::new("..data").join(f), dir.join(f)).unwrap();
        }
        let paths = [dir.join("cert.pem"), dir.join("key.pem")];
        let mut w = FileWatch::new(paths.clone());
        assert!(w.check().is_empty());
        symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(w.check(), paths.to_vec());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn changed_waits_for_a_change() {
        let dir = scratch("wait");
        let f = dir.join("a");
        std::fs::write(&f, "one").unwrap();
        let mut w = FileWatch::new([f.clone()]).every(Duration::from_millis(10));
        let writer = {
            let f = f.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(&f, "two").unwrap();
            })
        };
        let got = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap();
        assert_eq!(got, vec![f]);
        writer.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
