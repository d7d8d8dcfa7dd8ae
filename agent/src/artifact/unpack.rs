//! Putting a downloaded file into a release directory: a tar or tar.gz is
//! unpacked, refusing every entry that could write or point outside the
//! directory; any other file is placed as an executable.

use super::{ArtifactError, io, redact_url};
use slipway_config::source_url::file_name;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// What the URL's file name says the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TarGz,
    Tar,
    /// Anything else: a prebuilt binary, placed as is.
    File,
}

impl Kind {
    fn of(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Kind::TarGz
        } else if lower.ends_with(".tar") {
            Kind::Tar
        } else {
            Kind::File
        }
    }
}

/// The most one release may hold once unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content in all (`[agent] max_release_mb`).
    pub max_bytes: u64,
    /// Entries (files, directories, links): each costs an inode.
    pub max_entries: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: slipway_config::DEFAULT_MAX_RELEASE_MB << 20,
            max_entries: 200_000,
        }
    }
}

/// Put a fetched file into the release directory `dest` (created if
/// needed): a `.tar.gz`/`.tgz`/`.tar` is unpacked (entries at their paths,
/// modes kept, setuid bits dropped); any other file is copied to
/// `dest/<file name from the URL>` with mode 0755. Each entry's size is
/// checked against `limits` before it is written, so an archive that
/// expands past them stops there. Blocking.
pub fn unpack(
    file: &Path,
    url: &str,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<(), ArtifactError> {
    let shown = redact_url(url);
    let unpack_error = |reason: String| ArtifactError::Unpack {
        url: shown.clone(),
        reason,
    };
    let name = reqwest::Url::parse(url)
        .ok()
        .as_ref()
        .and_then(file_name)
        .ok_or_else(|| unpack_error("the URL does not end in a file name".into()))?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let opened = std::fs::File::open(file).map_err(io(file))?;
    let reader = std::io::BufReader::new(opened);
    match Kind::of(&name) {
        Kind::TarGz => untar(flate2::read::MultiGzDecoder::new(reader), dest, limits),
        Kind::Tar => untar(reader, dest, limits),
        Kind::File => {
            use std::os::unix::fs::PermissionsExt;
            let size = std::fs::metadata(file).map_err(io(file))?.len();
            if size > limits.max_bytes {
                return Err(unpack_error(too_big(size, limits)));
            }
            let target = dest.join(&name);
            std::fs::copy(file, &target).map_err(io(&target))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&target))
        }
    }
    .map_err(|e| match e {
        ArtifactError::Unpack { reason, .. } => unpack_error(reason),
        other => other,
    })
}

/// Unpack a tar stream into `dest`, refusing every entry that could write
/// or point outside it. Errors carry no URL (the caller adds it).
fn untar(reader: impl Read, dest: &Path, limits: &UnpackLimits) -> Result<(), ArtifactError> {
    use tar::EntryType;
    let refuse = |reason: String| ArtifactError::Unpack {
        url: String::new(),
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(true);
    // Symlinks seen so far: no later entry may be written through one, so
    // every path in the archive means the same thing on disk.
    let mut symlinks: Vec<PathBuf> = Vec::new();
    let (mut total, mut count) = (0u64, 0usize);
    let entries = archive
        .entries()
        .map_err(|e| refuse(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("a broken tar archive: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| refuse(format!("an entry with an invalid path: {e}")))?
            .into_owned();
        let shown = raw.display().to_string();
        let path = inside(&raw).map_err(|why| refuse(format!("entry `{shown}`: {why}")))?;
        if let Some(link) = symlinks.iter().find(|l| path.starts_with(l) && path != **l) {
            return Err(refuse(format!(
                "entry `{shown}` lies under the symlink `{}`",
                link.display()
            )));
        }
        count += 1;
        if count > limits.max_entries {
            return Err(refuse(format!(
                "the archive holds more than {} entries, the most a release may",
                limits.max_entries
            )));
        }
        // The size as it will be written: the one the reader uses (a PAX
        // `size` record overrides the header's field), and a sparse file's
        // real size, not the (smaller) data the archive carries for it.
        let header = entry.header();
        let size = header
            .as_gnu()
            .filter(|_| header.entry_type() == EntryType::GNUSparse)
            .and_then(|g| g.real_size().ok())
            .unwrap_or(0)
            .max(entry.size());
        total = total.saturating_add(size);
        if total > limits.max_bytes {
            return Err(refuse(format!(
                "entry `{shown}`: {}",
                too_big(total, limits)
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory => {}
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink => {
                let target = link_name(&entry, &shown).map_err(refuse)?;
                symlink_stays_inside(&path, &target).map_err(|why| {
                    refuse(format!(
                        "entry `{shown}`: a symlink to `{}` {why}",
                        target.display()
                    ))
                })?;
                symlinks.push(path.clone());
            }
            EntryType::Link => {
                let target = link_name(&entry, &shown).map_err(refuse)?;
                let target = inside(&target).map_err(|why| {
                    refuse(format!(
                        "entry `{shown}`: a hard link to `{}`: {why}",
                        target.display()
                    ))
                })?;
                if symlinks.iter().any(|l| target.starts_with(l)) {
                    return Err(refuse(format!(
                        "entry `{shown}`: a hard link through the symlink `{}`",
                        target.display()
                    )));
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(format!(
                    "entry `{shown}` is a device file or a pipe ({kind:?}); a release holds files, directories and links"
                )));
            }
            other => {
                return Err(refuse(format!(
                    "entry `{shown}` has an unsupported type ({other:?})"
                )));
            }
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| refuse(format!("entry `{shown}`: {e}")))?;
        if !unpacked {
            return Err(refuse(format!(
                "entry `{shown}` would be written outside the release directory"
            )));
        }
    }
    Ok(())
}

fn too_big(size: u64, limits: &UnpackLimits) -> String {
    format!(
        "unpacked, the release would hold {size} bytes, more than `[agent] max_release_mb` = {} ({} bytes) allows",
        limits.max_bytes >> 20,
        limits.max_bytes
    )
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<PathBuf, String> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        Ok(None) => Err(format!("entry `{shown}` is a link without a target")),
        Err(e) => Err(format!("entry `{shown}`: an invalid link target: {e}")),
    }
}

/// An archive path as a plain relative path: `.` dropped; absolute paths
/// and `..` refused.
fn inside(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("a `..` component would reach outside the release directory");
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path would write outside the release directory");
            }
        }
    }
    Ok(out)
}

/// A symlink at `link` (relative to the release root) may point to
/// `target` if the target is relative and stays inside. `..` may only lead
/// the target: after a name, `..` would step back from wherever that name
/// (perhaps itself a symlink) leads, which cannot be judged from the text.
fn symlink_stays_inside(link: &Path, target: &Path) -> Result<(), &'static str> {
    let depth = link.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for component in target.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err("is absolute: it points outside the release directory");
            }
            Component::CurDir => {}
            Component::ParentDir if named => {
                return Err("has `..` after a name: it cannot be checked to stay inside");
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
        }
    }
    if ups > depth {
        return Err("points outside the release directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// A tar entry written with raw header fields, so hostile archives can
    /// be made (the tar builder refuses some of these paths).
    fn entry(
        out: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
    ) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        out.append(&header, data).unwrap();
    }

    fn tarball(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        f(&mut out);
        out.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// Unpack `bytes` as if downloaded from a URL ending in `name`.
    fn unpack_as(name: &str, bytes: &[u8]) -> (tempfile::TempDir, Result<(), ArtifactError>) {
        unpack_within(name, bytes, &UnpackLimits::default())
    }

    fn unpack_within(
        name: &str,
        bytes: &[u8],
        limits: &UnpackLimits,
    ) -> (tempfile::TempDir, Result<(), ArtifactError>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("download");
        std::fs::write(&file, bytes).unwrap();
        let dest = dir.path().join("release");
        let result = unpack(
            &file,
            &format!("https://user:pw@example.com/x/{name}?sig=1"),
            &dest,
            limits,
        );
        (dir, result)
    }

    /// A small archive that expands past the limit stops at the entry that
    /// would cross it, before writing it (audit finding: a 404 KB tar.gz
    /// became 401 MB on the journal's disk).
    #[test]
    fn an_archive_that_expands_past_the_limits_is_refused_before_it_is_written() {
        use tar::EntryType::*;
        let zeros = vec![0u8; 20 << 20];
        let bomb = gzip(&tarball(|t| {
            entry(t, "readme", Regular, "", b"small", 0o644);
            entry(t, "zeros", Regular, "", &zeros, 0o644);
        }));
        assert!(bomb.len() < 100 << 10, "{} bytes", bomb.len());
        let limits = UnpackLimits {
            max_bytes: 5 << 20,
            ..UnpackLimits::default()
        };
        let (dir, result) = unpack_within("bomb.tar.gz", &bomb, &limits);
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains("entry `zeros`") && error.contains("`[agent] max_release_mb` = 5"),
            "{error}"
        );
        assert!(
            !dir.path().join("release/zeros").exists(),
            "nothing written"
        );
        // The same archive fits a larger limit.
        let (_, result) = unpack_within("bomb.tar.gz", &bomb, &UnpackLimits::default());
        result.unwrap();

        let many = tarball(|t| {
            for n in 0..11 {
                entry(t, &format!("f{n}"), Regular, "", b"x", 0o644);
            }
        });
        let few = UnpackLimits {
            max_entries: 10,
            ..UnpackLimits::default()
        };
        // A PAX `size` record that says more than the header's own field
        // is the size that gets written, and is counted.
        let mut pax = tar::Header::new_ustar();
        let record = format!("17 size={}\n", zeros.len());
        assert_eq!(record.len(), 17);
        pax.set_entry_type(XHeader);
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        let mut lying = tar::Header::new_ustar();
        lying.as_ustar_mut().unwrap().name[..5].copy_from_slice(b"zeros");
        lying.set_entry_type(Regular);
        lying.set_size(0);
        lying.set_mode(0o644);
        lying.set_cksum();
        let mut out = tar::Builder::new(Vec::new());
        out.append(&pax, record.as_bytes()).unwrap();
        out.append(&lying, &zeros[..]).unwrap();
        let smuggled = gzip(&out.into_inner().unwrap());
        let (dir, result) = unpack_within("pax.tar.gz", &smuggled, &limits);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("entry `zeros`"), "{error}");
        assert!(
            !dir.path().join("release/zeros").exists(),
            "nothing written"
        );

        let (_, result) = unpack_within("many.tar", &many, &few);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("more than 10 entries"), "{error}");
        // A plain file over the limit is refused too.
        let tiny = UnpackLimits {
            max_bytes: 4,
            ..UnpackLimits::default()
        };
        let (_, result) = unpack_within("tool", b"12345", &tiny);
        assert!(result.is_err());
    }

    #[test]
    fn a_tar_gz_is_unpacked_with_its_modes_and_inner_links() {
        use tar::EntryType::*;
        let archive = tarball(|t| {
            entry(t, "bin/", Directory, "", b"", 0o755);
            entry(t, "bin/app", Regular, "", b"#!/bin/sh\necho hi\n", 0o755);
            entry(t, "./share/readme.txt", Regular, "", b"hello", 0o644);
            entry(t, "bin/readme", Symlink, "../share/readme.txt", b"", 0o777);
            entry(t, "current", Symlink, "bin", b"", 0o777);
            entry(t, "bin/copy", Link, "bin/app", b"", 0o755);
        });
        for (name, bytes) in [
            ("app-1.2.0.tar.gz", gzip(&archive)),
            ("app.TGZ", gzip(&archive)),
            ("app.tar", archive.clone()),
        ] {
            let (dir, result) = unpack_as(name, &bytes);
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let release = dir.path().join("release");
            let app = release.join("bin/app");
            assert_eq!(std::fs::read(&app).unwrap(), b"#!/bin/sh\necho hi\n");
            let mode = std::fs::metadata(&app).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{name}");
            assert_eq!(std::fs::read(release.join("bin/readme")).unwrap(), b"hello");
            assert!(release.join("current/app").is_file());
            assert!(release.join("bin/copy").is_file());
        }
    }

    #[test]
    fn a_plain_file_is_placed_executable_under_its_url_name() {
        let (dir, result) = unpack_as("tool-linux-amd64", b"\x7fELF pretend");
        result.unwrap();
        let tool = dir.path().join("release/tool-linux-amd64");
        assert_eq!(std::fs::read(&tool).unwrap(), b"\x7fELF pretend");
        let mode = std::fs::metadata(&tool).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn archives_that_reach_outside_the_release_are_refused() {
        use tar::EntryType::*;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "absolute path",
                tarball(|t| entry(t, "/tmp/slipway-escape", Regular, "", b"x", 0o644)),
                "entry `/tmp/slipway-escape`: an absolute path",
            ),
            (
                "dot-dot",
                tarball(|t| entry(t, "a/../../escape", Regular, "", b"x", 0o644)),
                "entry `a/../../escape`: a `..` component",
            ),
            (
                "symlink up and out",
                tarball(|t| entry(t, "a/link", Symlink, "../../etc", b"", 0o777)),
                "a symlink to `../../etc` points outside",
            ),
            (
                "absolute symlink",
                tarball(|t| entry(t, "passwd", Symlink, "/etc/passwd", b"", 0o777)),
                "a symlink to `/etc/passwd` is absolute",
            ),
            (
                "dot-dot after a symlink",
                tarball(|t| {
                    entry(t, "here", Symlink, ".", b"", 0o777);
                    entry(t, "up", Symlink, "here/..", b"", 0o777);
                }),
                "has `..` after a name",
            ),
            (
                "write through a symlink",
                tarball(|t| {
                    entry(t, "sub/", Directory, "", b"", 0o755);
                    entry(t, "sub/up", Symlink, "..", b"", 0o777);
                    entry(t, "sub/up/evil", Regular, "", b"x", 0o644);
                }),
                "entry `sub/up/evil` lies under the symlink `sub/up`",
            ),
            (
                "hard link to a symlink",
                tarball(|t| {
                    entry(t, "a/b/", Directory, "", b"", 0o755);
                    entry(t, "a/b/l", Symlink, "../../x", b"", 0o777);
                    entry(t, "top", Link, "a/b/l", b"", 0o777);
                }),
                "a hard link through the symlink",
            ),
            (
                "character device",
                tarball(|t| entry(t, "null", Char, "", b"", 0o666)),
                "entry `null` is a device file",
            ),
            (
                "fifo",
                tarball(|t| entry(t, "pipe", Fifo, "", b"", 0o666)),
                "entry `pipe` is a device file or a pipe",
            ),
        ];
        for (what, archive, expected) in cases {
            let (dir, result) = unpack_as("app.tar.gz", &gzip(&archive));
            let err = result.expect_err(what).to_string();
            assert!(
                err.starts_with("unpacking https://example.com/x/app.tar.gz?…: "),
                "{what}: {err}"
            );
            assert!(err.contains(expected), "{what}: {err}");
            assert!(!dir.path().join("escape").exists(), "{what}");
        }
        assert!(!Path::new("/tmp/slipway-escape").exists());
    }

    #[test]
    fn a_file_that_is_not_what_its_name_says_is_a_clear_error() {
        let (_dir, result) = unpack_as("app.tar.gz", b"plain text, not gzip");
        let err = result.unwrap_err().to_string();
        assert!(
            err.starts_with("unpacking https://example.com/x/app.tar.gz?…: "),
            "{err}"
        );
    }
}
