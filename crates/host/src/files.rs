//! Files below a root directory, for the TFTP server
//! ([`usernet_core::HostIo::file_open`]).
//!
//! # Theory of operation
//! The guest names the file, so the name is hostile: `..`, absolute
//! symlinks and symlinks pointing out of the root must not reach anything
//! outside it. [`open_beneath`] opens the root (`O_PATH`) and resolves the
//! name with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so the
//! kernel itself refuses every resolution that leaves the root, with no
//! window between a check and the open. Where `openat2` is missing
//! (Linux before 5.6, or a seccomp profile that hides it) the fallback
//! canonicalizes the root and the name and checks the prefix, then opens
//! the canonical path with `O_NOFOLLOW`: a symlink swapped in after the
//! check then fails the open rather than being followed.
//!
//! Only regular files are served (a FIFO or device would block or leak);
//! files are opened non-blocking so that opening a FIFO cannot hang the
//! event loop before the type check. Reads are `pread`, so a transfer's
//! retransmission reads again from its offset and nothing is buffered.
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A file opened for reading below a root, and its size.
#[derive(Debug)]
pub struct RootFile {
    file: File,
    size: u64,
}

impl RootFile {
    /// The size when opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads at `offset` (`pread`).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_owned())
}

/// Opens the regular file `name` below `root` for reading; refuses names
/// that resolve outside `root` (`PermissionDenied`) and anything that is
/// not a regular file.
pub fn open_beneath(root: &Path, name: &str) -> io::Result<RootFile> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let file = match rustix::fs::openat2(&dir, name, flags, Mode::empty(), resolve) {
        Ok(fd) => File::from(fd),
        Err(Errno::XDEV) => return Err(refused("path leads out of the TFTP root")),
        Err(Errno::NOSYS | Errno::PERM) => open_checked(root, name)?,
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused("not a regular file"));
    }
    Ok(RootFile {
        file,
        size: meta.len(),
    })
}

/// The fallback without `openat2`: canonical prefix check, then an open
/// that follows no symlink.
fn open_checked(root: &Path, name: &str) -> io::Result<File> {
    let root = root.canonicalize()?;
    let path = root.join(name).canonicalize()?;
    if !path.starts_with(&root) {
        return Err(refused("path leads out of the TFTP root"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with a file, a subdirectory, and symlinks in and out, beside
    /// a secret outside it.
    fn tree(label: &str) -> std::path::PathBuf {
        let base =
            std::env::temp_dir().join(format!("usernet-files-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(base.join("secret"), b"secret").expect("write");
        std::fs::write(root.join("sub/file"), b"0123456789").expect("write");
        symlink("sub/file", root.join("inside")).expect("symlink");
        symlink("../secret", root.join("outside")).expect("symlink");
        symlink(base.join("secret"), root.join("absolute")).expect("symlink");
        symlink("/proc/self/root/etc/passwd", root.join("magic")).expect("symlink");
        base
    }

    fn check(open: impl Fn(&Path, &str) -> io::Result<File>, label: &str) {
        let base = tree(label);
        let root = base.join("root");
        let f = open(&root, "sub/file").expect("a file below the root");
        let mut buf = [0u8; 4];
        assert_eq!(f.read_at(&mut buf, 6).expect("read"), 4);
        assert_eq!(&buf, b"6789");
        open(&root, "inside").expect("a symlink staying inside");
        for bad in [
            "../secret",
            "outside",
            "absolute",
            "sub/../../secret",
            "magic",
        ] {
            let e = open(&root, bad).expect_err(bad);
            assert_ne!(e.kind(), io::ErrorKind::NotFound, "{bad}: {e}");
        }
        assert_eq!(
            open(&root, "missing").map(drop).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn openat2_stays_beneath_the_root() {
        check(|r, n| open_beneath(r, n).map(|f| f.file), "openat2");
        let base = tree("types");
        let root = base.join("root");
        let e = open_beneath(&root, "sub").expect_err("a directory");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(open_beneath(&root, "sub/file").expect("file").size(), 10);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn fallback_stays_beneath_the_root() {
        check(open_checked, "fallback");
    }
}
