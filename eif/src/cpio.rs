//! Deterministic initramfs archives: the cpio "newc" format the Linux kernel
//! unpacks (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Every entry gets owner 0:0, a mode chosen by the caller (never the source
//! file's), the same mtime (`SOURCE_DATE_EPOCH`), and a sequential inode
//! number; entries are written sorted by path with every parent directory
//! present. The output therefore depends only on the paths and contents.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

/// One file or directory in the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, source: Source },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// An archive being assembled. Paths are relative, `/`-separated, without
/// `.` or `..` components.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_path(path: &str) -> io::Result<()> {
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.ends_with('/')
            || path.contains('\0')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("archive path {path:?}: use a relative path without . or .. components"),
            ));
        }
        Ok(())
    }

    fn add_parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.entries
                .entry(dir.to_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            at += i + 1;
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        Self::check_path(path)?;
        self.add_parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::Dir {
                mode: mode & 0o7777,
            },
        );
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, source: Source) -> io::Result<()> {
        Self::check_path(path)?;
        self.add_parents(path);
        if let Source::Path(p) = &source {
            if !p.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: not a regular file", p.display()),
                ));
            }
        }
        self.entries.insert(
            path.to_owned(),
            Entry::File {
                mode: mode & 0o7777,
                source,
            },
        );
        Ok(())
    }

    /// Write the archive; returns the number of bytes written.
    pub fn write_to(&self, out: &mut impl Write, mtime: u32) -> io::Result<u64> {
        let mut n = 0u64;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            match entry {
                Entry::Dir { mode } => {
                    n += header(out, ino, S_IFDIR | mode, 2, mtime, 0, path)?;
                }
                Entry::File { mode, source } => {
                    let size = match source {
                        Source::Bytes(b) => b.len() as u64,
                        Source::Path(p) => std::fs::metadata(p)?.len(),
                    };
                    let size32 = u32::try_from(size).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{path}: {size} bytes; newc entries hold at most 4 GiB"),
                        )
                    })?;
                    n += header(out, ino, S_IFREG | mode, 1, mtime, size32, path)?;
                    let copied = match source {
                        Source::Bytes(b) => {
                            out.write_all(b)?;
                            b.len() as u64
                        }
                        Source::Path(p) => io::copy(&mut std::fs::File::open(p)?, out)?,
                    };
                    if copied != size {
                        return Err(io::Error::other(format!(
                            "{path}: changed size while being archived"
                        )));
                    }
                    n += copied + pad(out, copied)?;
                }
            }
        }
        n += header(out, 0, 0, 1, 0, 0, "TRAILER!!!")?;
        Ok(n)
    }

    pub fn to_vec(&self, mtime: u32) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v, mtime)?;
        Ok(v)
    }
}

fn pad(out: &mut impl Write, len: u64) -> io::Result<u64> {
    let p = (4 - (len % 4)) % 4;
    out.write_all(&[0u8; 3][..p as usize])?;
    Ok(p)
}

fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    name: &str,
) -> io::Result<u64> {
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let h = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{mtime:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, 0, 0
    );
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let len = h.len() as u64 + namesize as u64;
    Ok(len + pad(out, len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_exact() {
        let mut a = Archive::new();
        a.file("rootfs/cmd", 0o644, Source::Bytes(b"hi".to_vec()))
            .unwrap();
        let v = a.to_vec(1_700_000_000).unwrap();
        // "rootfs" dir first (sorted, parents implied), then the file, then the trailer.
        assert!(v.starts_with(b"07070100000001000041ED"));
        let s = String::from_utf8_lossy(&v);
        assert!(s.contains("rootfs\0"));
        assert!(s.contains("rootfs/cmd\0"));
        assert!(s.contains("TRAILER!!!\0"));
        assert_eq!(v.len() % 4, 0);
        // mtime is the given one, in hex.
        assert!(s.contains(&format!("{:08X}", 1_700_000_000u32)));
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = Archive::new();
        a.file("b", 0o600, Source::Bytes(vec![1])).unwrap();
        a.file("a/x", 0o755, Source::Bytes(vec![2, 3])).unwrap();
        let mut b = Archive::new();
        b.file("a/x", 0o755, Source::Bytes(vec![2, 3])).unwrap();
        b.file("b", 0o600, Source::Bytes(vec![1])).unwrap();
        assert_eq!(a.to_vec(0).unwrap(), b.to_vec(0).unwrap());
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut a = Archive::new();
        for p in ["/etc/passwd", "../x", "a/./b", "", "a//b", "a/"] {
            assert!(a.file(p, 0o644, Source::Bytes(vec![])).is_err(), "{p}");
        }
    }
}
