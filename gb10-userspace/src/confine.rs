//! Files opened beneath a root directory with openat2 `RESOLVE_BENEATH` on the root's
//! directory fd: nothing outside the root is ever opened, symlinks included. TFTP and
//! HTTP serve every file through it.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// Why a name beneath the root was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not found")]
    NotFound,
    /// `..` past the root, an absolute symlink, or a symlink that leads out.
    #[error("resolves outside the root")]
    Outside,
    #[error("permission denied")]
    Denied,
    #[error("openat2 is unavailable (Linux 5.6+ needed); refusing to open without confinement")]
    Unsupported,
    #[error("opening the file")]
    Io(#[source] io::Error),
}

/// A root directory, held open as a directory fd.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
}

impl Root {
    /// Opens `path` as a root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = File::open(path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Self { dir: dir.into() })
    }

    /// Opens `name` (relative; `.` is the root itself) beneath the root, read-only: a
    /// file or a directory. Blocking.
    pub fn open_beneath(&self, name: &str) -> Result<File, OpenError> {
        let c_name = CString::new(name).map_err(|_| OpenError::NotFound)?;
        // SAFETY: open_how is plain data; zeroed is its documented default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        // O_NONBLOCK: a FIFO planted in the root must not hang the open.
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: the pointers are valid for the call; the size is the struct's.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c_name.as_ptr(),
                &raw const how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => OpenError::NotFound,
                Some(libc::EXDEV | libc::ELOOP) => OpenError::Outside,
                Some(libc::EACCES | libc::EPERM) => OpenError::Denied,
                Some(libc::ENOSYS) => OpenError::Unsupported,
                _ => OpenError::Io(err),
            });
        }
        // SAFETY: the syscall returned a fresh fd we now own.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// What changes when a file's content does: its identity, size, and modification and
/// change times to the nanosecond (a write bumps both). HTTP's kept small files and
/// TFTP's shared files are known unchanged, or a new version, by it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn opens_stay_beneath() {
        let dir = std::env::temp_dir().join(format!("gb10-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        std::fs::write(root.join("sub/ok"), b"ok").unwrap();
        symlink(dir.join("secret"), root.join("abs")).unwrap();
        symlink("../secret", root.join("rel")).unwrap();
        symlink("sub/ok", root.join("inside")).unwrap();
        symlink(&dir, root.join("dirlink")).unwrap();
        let r = Root::open(&root).unwrap();
        assert!(r.open_beneath("sub/ok").is_ok());
        assert!(
            r.open_beneath("inside").is_ok(),
            "a symlink within the root"
        );
        assert!(r.open_beneath(".").unwrap().metadata().unwrap().is_dir());
        for escape in ["abs", "rel", "dirlink/secret", "../secret", "/etc/passwd"] {
            let err = r.open_beneath(escape).unwrap_err();
            assert!(matches!(err, OpenError::Outside), "{escape}: {err:?}");
        }
        assert!(matches!(r.open_beneath("nope"), Err(OpenError::NotFound)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
