//! Confinement to the TFTP root: names are checked, then opened with openat2
//! `RESOLVE_BENEATH` on the root's directory fd, so nothing outside the root is ever
//! opened, symlinks included.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use super::packet::ErrorCode;

/// The longest file name we accept (bytes); boot file names are far shorter.
pub const MAX_NAME: usize = 255;

/// Why a requested name is not served. Each maps to a TFTP error code and a message for
/// the client that reveals nothing about the server's files.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("file name is not UTF-8")]
    NotUtf8,
    #[error("file name is empty")]
    Empty,
    #[error("file name is longer than {MAX_NAME} bytes")]
    TooLong,
    #[error("file name holds a NUL, a backslash or a control character")]
    BadChar,
    #[error("file name has a `..` component")]
    DotDot,
    #[error("not found")]
    NotFound,
    #[error("resolves outside the TFTP root")]
    Outside,
    #[error("not a regular file")]
    NotAFile,
    #[error("permission denied")]
    Denied,
    #[error("openat2 is unavailable (Linux 5.6+ needed); refusing to open without confinement")]
    Unsupported,
    #[error("opening the file")]
    Io(#[source] io::Error),
    #[error("rendering the boot loader's config")]
    Render(#[source] Box<crate::templates::TemplateError>),
}

impl PathError {
    /// The code and message the client gets.
    pub fn tftp(&self) -> (ErrorCode, &'static str) {
        match self {
            PathError::NotFound => (ErrorCode::FileNotFound, "File not found"),
            PathError::Unsupported | PathError::Io(_) => (ErrorCode::NotDefined, "Cannot read"),
            // Never a fragment of the config: the log names template and variable.
            PathError::Render(_) => (ErrorCode::NotDefined, "Config failed to render"),
            _ => (ErrorCode::AccessViolation, "Access violation"),
        }
    }
}

/// The client's name made relative: UTF-8, no NUL/backslash/control characters, no
/// `..`, not too long. Leading `/` are dropped because GRUB asks for `/grub/grub.cfg`
/// meaning the root (as tftp-hpa `-s` and dnsmasq do); the result is still resolved
/// beneath the root, so `/etc/passwd` is `<root>/etc/passwd`.
pub fn clean(raw: &[u8]) -> Result<String, PathError> {
    if raw.len() > MAX_NAME {
        return Err(PathError::TooLong);
    }
    let text = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
    if text.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(PathError::BadChar);
    }
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(PathError::DotDot);
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// The TFTP root, held open as a directory fd.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
}

impl Root {
    /// Opens `path` as the root.
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

    /// Opens a [`clean`]ed name beneath the root: a regular file or an error. Blocking.
    pub fn open_file(&self, name: &str) -> Result<File, PathError> {
        let c_name = CString::new(name).map_err(|_| PathError::BadChar)?;
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
                Some(libc::ENOENT | libc::ENOTDIR) => PathError::NotFound,
                Some(libc::EXDEV | libc::ELOOP) => PathError::Outside,
                Some(libc::EACCES | libc::EPERM) => PathError::Denied,
                Some(libc::ENOSYS) => PathError::Unsupported,
                _ => PathError::Io(err),
            });
        }
        // SAFETY: the syscall returned a fresh fd we now own.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let meta = file.metadata().map_err(PathError::Io)?;
        if !meta.is_file() {
            return Err(PathError::NotAFile);
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn clean_rejects_every_vector() {
        assert_eq!(clean(b"/grub/grub.cfg").unwrap(), "grub/grub.cfg");
        assert_eq!(clean(b"efi//./shimx64.efi").unwrap(), "efi/shimx64.efi");
        for bad in [
            &b"../etc/passwd"[..],
            b"a/../../b",
            b"/..",
            b"a\\..\\b",
            b"a\0b",
            b"\xff\xfe",
            b"",
            b"/",
            b"./.",
            &[b'a'; MAX_NAME + 1],
        ] {
            assert!(clean(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn open_stays_beneath() {
        let dir = std::env::temp_dir().join(format!("gb10-tftp-path-{}", std::process::id()));
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
        assert!(r.open_file("sub/ok").is_ok());
        assert!(r.open_file("inside").is_ok(), "a symlink within the root");
        for escape in ["abs", "rel", "dirlink/secret"] {
            let err = r.open_file(escape).unwrap_err();
            assert!(matches!(err, PathError::Outside), "{escape}: {err:?}");
        }
        assert!(matches!(r.open_file("nope"), Err(PathError::NotFound)));
        assert!(matches!(r.open_file("sub"), Err(PathError::NotAFile)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
