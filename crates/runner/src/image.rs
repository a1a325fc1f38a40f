//! The local image store: `<data_dir>/images/<name>/rootfs` plus `image.json`
//! ([`ImageConfig`]: read-only host binds, default command, environment, working dir).
//!
//! - [`ImageStore::import`] takes a rootfs directory, a rootfs tarball (`.tar`, `.tar.gz`,
//!   `.tgz`) or an OCI image layout (`index.json` → manifest → layers applied in order,
//!   whiteouts honoured; the image config's `Env`, `Entrypoint`, `Cmd` and `WorkingDir` are
//!   kept);
//! - the built-in `host` image binds the host's `/usr`, `/bin`, `/sbin`, `/lib*` read-only
//!   (mirroring the host's merged-/usr symlinks) over a minimal generated `/etc`;
//! - the built-in `busybox` image is Debian's static busybox (`/bin/busybox` from the
//!   `busybox-static` package) plus one symlink per applet.
//!
//! Built-in images are made on first use by [`ImageStore::ensure`], idempotently: an image
//! is built in a temporary directory and renamed into place, so a crash never leaves a
//! half-made image and concurrent builders do not clash.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Names of the built-in images.
pub const BUILTIN: &[&str] = &["host", "busybox"];

/// Where the static busybox comes from (Debian's `busybox-static`).
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// Kinds of image store failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageErrorKind {
    /// No such image.
    NotFound,
    /// The name or the source is not usable (bad name, unknown format, corrupt layout).
    Invalid,
    /// A file system or `tar` operation failed.
    Io,
}

/// An image store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ImageError {
    /// What kind of failure.
    pub kind: ImageErrorKind,
    /// Details.
    pub message: String,
}

impl ImageError {
    fn new(kind: ImageErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Self {
        Self::new(ImageErrorKind::Io, format!("{what} {}: {e}", path.display()))
    }
}

/// A read-only bind of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub destination: PathBuf,
}

/// What an image says beside its rootfs (`image.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Host paths bound read-only into the container (the `host` image).
    #[serde(default)]
    pub binds: Vec<Bind>,
    /// Default environment (`KEY=VALUE`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Entrypoint, prepended to the command.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Default command when the job gives none.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Working directory (default `/work`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Where it came from (informational).
    #[serde(default)]
    pub source: String,
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its name.
    pub name: String,
    /// Its rootfs directory.
    pub rootfs: PathBuf,
    /// Its configuration.
    pub config: ImageConfig,
}

/// The image store under `<data_dir>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// Whether `name` is a valid image name (a directory name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ImageStore {
    /// The store under `<data_dir>/images` (created if missing).
    pub fn new(data_dir: &Path) -> Result<Self, ImageError> {
        let dir = std::path::absolute(data_dir.join("images"))
            .map_err(|e| ImageError::io("resolve", data_dir, e))?;
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
        Ok(Self { dir })
    }

    /// The stored image `name`.
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::new(
                ImageErrorKind::Invalid,
                format!("bad image name {name:?}"),
            ));
        }
        let d = self.dir.join(name);
        let rootfs = d.join("rootfs");
        if !rootfs.is_dir() {
            return Err(ImageError::new(
                ImageErrorKind::NotFound,
                format!("no image {name:?}"),
            ));
        }
        let config = match std::fs::read(d.join("image.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::new(ImageErrorKind::Invalid, e.to_string()))?,
            Err(_) => ImageConfig::default(),
        };
        Ok(Image {
            name: name.to_string(),
            rootfs,
            config,
        })
    }

    /// The image `name`, building it first if it is a missing built-in.
    pub fn ensure(&self, name: &str) -> Result<Image, ImageError> {
        match self.get(name) {
            Err(e) if e.kind == ImageErrorKind::NotFound && BUILTIN.contains(&name) => {
                match name {
                    "host" => self.build_host()?,
                    _ => self.build_busybox()?,
                }
                self.get(name)
            }
            r => r,
        }
    }

    /// Every stored image, by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| ImageError::io("list", &self.dir, e))?;
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names.iter().filter_map(|n| self.get(n).ok()).collect())
    }

    /// Removes an image.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let img = self.get(name)?;
        let d = img.rootfs.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::remove_dir_all(&d).map_err(|e| ImageError::io("remove", &d, e))
    }

    /// Imports `src` (a rootfs directory, a rootfs tarball or an OCI image layout) as
    /// `name`, replacing an image of that name.
    pub fn import(&self, name: &str, src: &Path) -> Result<Image, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::new(
                ImageErrorKind::Invalid,
                format!("bad image name {name:?}"),
            ));
        }
        let src = std::path::absolute(src).map_err(|e| ImageError::io("resolve", src, e))?;
        let staging = self.staging(name)?;
        let rootfs = staging.path().join("rootfs");
        let mut config = ImageConfig {
            source: src.display().to_string(),
            ..Default::default()
        };
        let r = (|| {
            if src.join("index.json").is_file() && src.join("oci-layout").is_file() {
                std::fs::create_dir(&rootfs).map_err(|e| ImageError::io("create", &rootfs, e))?;
                import_oci_layout(&src, &rootfs, &mut config)
            } else if src.is_dir() {
                run(Command::new("cp").arg("-a").arg(&src).arg(&rootfs), "cp -a")
            } else if src.is_file() {
                std::fs::create_dir(&rootfs).map_err(|e| ImageError::io("create", &rootfs, e))?;
                untar(&src, &rootfs, &[])
            } else {
                Err(ImageError::new(
                    ImageErrorKind::Invalid,
                    format!("{} is neither a directory nor a file", src.display()),
                ))
            }
        })();
        r?;
        prepare_rootfs(&rootfs)?;
        self.commit(name, staging, &config, true)
    }

    fn staging(&self, name: &str) -> Result<tempfile::TempDir, ImageError> {
        tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempdir_in(&self.dir)
            .map_err(|e| ImageError::io("create staging in", &self.dir, e))
    }

    /// Writes `image.json` and renames the staging dir into place.
    fn commit(
        &self,
        name: &str,
        staging: tempfile::TempDir,
        config: &ImageConfig,
        replace: bool,
    ) -> Result<Image, ImageError> {
        let body = serde_json::to_vec_pretty(config)
            .map_err(|e| ImageError::new(ImageErrorKind::Io, e.to_string()))?;
        let cfg = staging.path().join("image.json");
        std::fs::write(&cfg, body).map_err(|e| ImageError::io("write", &cfg, e))?;
        let dest = self.dir.join(name);
        let staged = staging.keep();
        if dest.exists() {
            if !replace {
                // Someone else built it meanwhile: theirs is as good as ours.
                let _ = std::fs::remove_dir_all(&staged);
                return self.get(name);
            }
            let old = self.dir.join(format!(".{name}.old.{}", std::process::id()));
            std::fs::rename(&dest, &old).map_err(|e| ImageError::io("rename", &dest, e))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        if let Err(e) = std::fs::rename(&staged, &dest) {
            let _ = std::fs::remove_dir_all(&staged);
            if dest.exists() && !replace {
                return self.get(name);
            }
            return Err(ImageError::io("rename", &staged, e));
        }
        tracing::info!(image = name, rootfs = %dest.join("rootfs").display(), "image stored");
        self.get(name)
    }

    fn build_host(&self) -> Result<(), ImageError> {
        let staging = self.staging("host")?;
        let rootfs = staging.path().join("rootfs");
        std::fs::create_dir(&rootfs).map_err(|e| ImageError::io("create", &rootfs, e))?;
        let mut binds = Vec::new();
        for top in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            let Ok(md) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            let inside = rootfs.join(top);
            if md.file_type().is_symlink() {
                // Merged /usr: mirror the link, the bind of /usr makes it resolve.
                let target = std::fs::read_link(&host).map_err(|e| ImageError::io("readlink", &host, e))?;
                std::os::unix::fs::symlink(&target, &inside)
                    .map_err(|e| ImageError::io("symlink", &inside, e))?;
            } else if md.is_dir() {
                std::fs::create_dir(&inside).map_err(|e| ImageError::io("create", &inside, e))?;
                binds.push(Bind {
                    source: host.clone(),
                    destination: Path::new("/").join(top),
                });
            }
        }
        prepare_rootfs(&rootfs)?;
        let config = ImageConfig {
            binds,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            source: "built-in: the host's /usr, /bin, /sbin, /lib* read-only".into(),
            ..Default::default()
        };
        self.commit("host", staging, &config, false).map(|_| ())
    }

    fn build_busybox(&self) -> Result<(), ImageError> {
        let bb = Path::new(BUSYBOX_BIN);
        if !bb.is_file() {
            return Err(ImageError::new(
                ImageErrorKind::NotFound,
                format!(
                    "{BUSYBOX_BIN} is missing: install Debian's busybox-static (infra/images/busybox.sh)"
                ),
            ));
        }
        let staging = self.staging("busybox")?;
        let rootfs = staging.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| ImageError::io("create", &bin, e))?;
        std::fs::copy(bb, bin.join("busybox")).map_err(|e| ImageError::io("copy", bb, e))?;
        let out = Command::new(bb)
            .arg("--list")
            .output()
            .map_err(|e| ImageError::io("run", bb, e))?;
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        for d in ["sbin", "usr/bin", "usr/sbin"] {
            let p = rootfs.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("create", &p, e))?;
        }
        prepare_rootfs(&rootfs)?;
        let config = ImageConfig {
            env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
            cmd: vec!["/bin/sh".into()],
            source: format!("built-in: {BUSYBOX_BIN} (Debian busybox-static)"),
            ..Default::default()
        };
        self.commit("busybox", staging, &config, false).map(|_| ())
    }
}

/// Creates the mount points a container needs (the rootfs is read-only at run time, so
/// they must exist beforehand) and a minimal `/etc` where the image has none.
fn prepare_rootfs(rootfs: &Path) -> Result<(), ImageError> {
    for d in ["proc", "dev", "sys", "tmp", "work", "etc"] {
        let p = rootfs.join(d);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("create", &p, e))?;
        }
    }
    let files: [(&str, &str); 6] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/work:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        ("etc/hostname", "jetrun\n"),
        ("etc/resolv.conf", ""),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        ),
    ];
    for (f, body) in files {
        let p = rootfs.join(f);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::write(&p, body).map_err(|e| ImageError::io("write", &p, e))?;
        }
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ImageError> {
    let out = cmd
        .output()
        .map_err(|e| ImageError::new(ImageErrorKind::Io, format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::new(
            ImageErrorKind::Io,
            format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Extracts a (possibly compressed) tarball into `dest` with GNU tar, which detects the
/// compression, strips leading `/` and refuses `..` members.
fn untar(tarball: &Path, dest: &Path, extra: &[&str]) -> Result<(), ImageError> {
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dest)
            .arg("--numeric-owner")
            .arg("--no-overwrite-dir")
            .args(extra),
        "tar -x",
    )
}

fn read_json(path: &Path) -> Result<serde_json::Value, ImageError> {
    let b = std::fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    serde_json::from_slice(&b)
        .map_err(|e| ImageError::new(ImageErrorKind::Invalid, format!("{}: {e}", path.display())))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| ImageError::new(ImageErrorKind::Invalid, format!("bad digest {digest:?}")))?;
    if !valid_name(alg) || !valid_name(hex) {
        return Err(ImageError::new(
            ImageErrorKind::Invalid,
            format!("bad digest {digest:?}"),
        ));
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

/// index.json → (nested index →) manifest → config + layers, applied in order.
fn import_oci_layout(layout: &Path, rootfs: &Path, config: &mut ImageConfig) -> Result<(), ImageError> {
    let invalid = |m: &str| ImageError::new(ImageErrorKind::Invalid, m.to_string());
    let mut doc = read_json(&layout.join("index.json"))?;
    // Follow indexes down to the first manifest (preferring linux/amd64 when labelled).
    let manifest = loop {
        let media = doc.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
        if doc.get("layers").is_some() {
            break doc;
        }
        let manifests = doc
            .get("manifests")
            .and_then(|m| m.as_array())
            .ok_or_else(|| invalid(&format!("index without manifests ({media})")))?;
        let pick = manifests
            .iter()
            .find(|m| {
                m.pointer("/platform/architecture").and_then(|a| a.as_str()) == Some("amd64")
                    && m.pointer("/platform/os").and_then(|a| a.as_str()) == Some("linux")
            })
            .or_else(|| manifests.first())
            .ok_or_else(|| invalid("empty index"))?;
        let digest = pick
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| invalid("manifest without digest"))?;
        doc = read_json(&blob_path(layout, digest)?)?;
    };
    if let Some(digest) = manifest.pointer("/config/digest").and_then(|d| d.as_str()) {
        let cfg = read_json(&blob_path(layout, digest)?)?;
        let strings = |p: &str| -> Vec<String> {
            cfg.pointer(p)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        config.env = strings("/config/Env");
        config.entrypoint = strings("/config/Entrypoint");
        config.cmd = strings("/config/Cmd");
        config.workdir = cfg
            .pointer("/config/WorkingDir")
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_string);
    }
    let layers = manifest
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or_else(|| invalid("manifest without layers"))?;
    for layer in layers {
        let digest = layer
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| invalid("layer without digest"))?;
        apply_layer(&blob_path(layout, digest)?, rootfs)?;
    }
    Ok(())
}

/// Applies one layer: its whiteouts first (they delete what lower layers made), then its
/// files, without the whiteout markers.
fn apply_layer(blob: &Path, rootfs: &Path) -> Result<(), ImageError> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(blob)
        .output()
        .map_err(|e| ImageError::io("list", blob, e))?;
    if !out.status.success() {
        return Err(ImageError::new(
            ImageErrorKind::Invalid,
            format!("{} is not a tar layer", blob.display()),
        ));
    }
    for entry in String::from_utf8_lossy(&out.stdout).lines() {
        let entry = entry.trim_start_matches("./").trim_start_matches('/');
        let path = Path::new(entry);
        let Some(base) = path.file_name().and_then(|b| b.to_str()) else {
            continue;
        };
        let Some(target) = base.strip_prefix(".wh.") else {
            continue;
        };
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            continue;
        }
        let parent = rootfs.join(path.parent().unwrap_or(Path::new("")));
        if target == ".wh..opq" {
            // Opaque dir: hide everything lower layers put there.
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    let p = e.path();
                    let _ = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        } else {
            let p = parent.join(target);
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {
                    let _ = std::fs::remove_dir_all(&p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&p);
                }
                Err(_) => {}
            }
        }
    }
    untar(blob, rootfs, &["--exclude=.wh.*"])
}
