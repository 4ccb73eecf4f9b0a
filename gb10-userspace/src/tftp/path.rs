//! TFTP file names: checked and cleaned, then opened beneath the TFTP root through
//! [`crate::confine`], so nothing outside the root is ever opened, symlinks included.
use std::fs::File;

use super::packet::ErrorCode;
use crate::confine::OpenError;

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
    /// The open beneath the root failed: not found, outside, denied, ...
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("not a regular file")]
    NotAFile,
    #[error("rendering the boot loader's config")]
    Render(#[source] Box<crate::templates::TemplateError>),
}

impl PathError {
    /// The code and message the client gets.
    pub fn tftp(&self) -> (ErrorCode, &'static str) {
        match self {
            PathError::Open(OpenError::NotFound) => (ErrorCode::FileNotFound, "File not found"),
            PathError::Open(OpenError::Unsupported | OpenError::Io(_)) => {
                (ErrorCode::NotDefined, "Cannot read")
            }
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

pub use crate::confine::Root;

/// Opens a [`clean`]ed name beneath the root: a regular file or an error. Blocking.
pub fn open_file(root: &Root, name: &str) -> Result<File, PathError> {
    let file = root.open_beneath(name)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(PathError::NotAFile);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
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
    fn only_regular_files() {
        let dir = std::env::temp_dir().join(format!("gb10-tftp-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/ok"), b"ok").unwrap();
        let r = Root::open(&dir).unwrap();
        assert!(open_file(&r, "sub/ok").is_ok());
        assert!(matches!(open_file(&r, "sub"), Err(PathError::NotAFile)));
        assert!(matches!(
            open_file(&r, "nope"),
            Err(PathError::Open(OpenError::NotFound))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
