#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The image store (imports of every kind, built-ins) and the log tail on big files.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use jetrun_runner::image::{ImageErrorKind, ImageStore};
use jetrun_runner::logs;
use sha2::{Digest, Sha256};

fn sh(cmd: &str, dir: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

/// Stores `bytes` as a blob of the layout and returns its descriptor.
fn blob(layout: &Path, media: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    serde_json::json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

#[test]
fn import_dir_tarball_and_oci_layout() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::new(&d.path().join("data")).unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/hello.txt"), "hi").unwrap();

    let img = store.import("fromdir", &src).unwrap();
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("app/hello.txt")).unwrap(),
        "hi"
    );
    assert!(
        img.rootfs.join("proc").is_dir() && img.rootfs.join("work").is_dir(),
        "mount points made"
    );

    sh("tar -czf ../rootfs.tar.gz . && tar -cf ../rootfs.tar .", &src);
    for (name, file) in [("fromtgz", "rootfs.tar.gz"), ("fromtar", "rootfs.tar")] {
        let img = store.import(name, &d.path().join(file)).unwrap();
        assert_eq!(
            std::fs::read_to_string(img.rootfs.join("app/hello.txt")).unwrap(),
            "hi"
        );
    }

    // An OCI layout of two layers; the second deletes a file and makes a dir opaque.
    let layout = d.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let l1 = d.path().join("l1");
    std::fs::create_dir_all(l1.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(l1.join("bin")).unwrap();
    std::fs::write(l1.join("etc/keep"), "keep").unwrap();
    std::fs::write(l1.join("etc/gone"), "gone").unwrap();
    std::fs::write(l1.join("etc/conf.d/old"), "old").unwrap();
    std::fs::write(l1.join("bin/tool"), "v1").unwrap();
    sh("tar -czf ../l1.tgz .", &l1);
    let l2 = d.path().join("l2");
    std::fs::create_dir_all(l2.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(l2.join("bin")).unwrap();
    std::fs::write(l2.join("etc/.wh.gone"), "").unwrap();
    std::fs::write(l2.join("etc/conf.d/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("etc/conf.d/new"), "new").unwrap();
    std::fs::write(l2.join("bin/tool"), "v2").unwrap();
    sh("tar -cf ../l2.tar .", &l2);
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let d1 = blob(&layout, gz, &std::fs::read(d.path().join("l1.tgz")).unwrap());
    let d2 = blob(
        &layout,
        "application/vnd.oci.image.layer.v1.tar",
        &std::fs::read(d.path().join("l2.tar")).unwrap(),
    );
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["/bin/tool"], "WorkingDir": "/app"}});
    let c = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        cfg.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": c, "layers": [d1, d2]});
    let m = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    std::fs::write(
        layout.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [m]}).to_string(),
    )
    .unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let img = store.import("fromoci", &layout).unwrap();
    let r = &img.rootfs;
    assert_eq!(std::fs::read_to_string(r.join("etc/keep")).unwrap(), "keep");
    assert!(!r.join("etc/gone").exists(), "whiteout honoured");
    assert!(!r.join("etc/.wh.gone").exists(), "no whiteout markers left");
    assert!(!r.join("etc/conf.d/old").exists(), "opaque dir honoured");
    assert_eq!(std::fs::read_to_string(r.join("etc/conf.d/new")).unwrap(), "new");
    assert_eq!(
        std::fs::read_to_string(r.join("bin/tool")).unwrap(),
        "v2",
        "layers in order"
    );
    assert_eq!(img.config.cmd, vec!["/bin/tool"]);
    assert_eq!(img.config.env, vec!["PATH=/bin", "A=1"]);
    assert_eq!(img.config.workdir.as_deref(), Some("/app"));

    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["fromdir", "fromoci", "fromtar", "fromtgz"]);
    assert_eq!(store.get("nope").unwrap_err().kind, ImageErrorKind::NotFound);
    assert_eq!(
        store.import("../bad", &src).unwrap_err().kind,
        ImageErrorKind::Invalid
    );
    assert_eq!(
        store
            .import("missing", &d.path().join("nothing"))
            .unwrap_err()
            .kind,
        ImageErrorKind::Invalid
    );
    // Re-import replaces.
    std::fs::write(src.join("app/hello.txt"), "hi again").unwrap();
    let img = store.import("fromdir", &src).unwrap();
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("app/hello.txt")).unwrap(),
        "hi again"
    );
}

#[test]
fn builtin_images_are_made_once() {
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::new(d.path()).unwrap();
    if Path::new(jetrun_runner::image::BUSYBOX_BIN).is_file() {
        let a = store.ensure("busybox").unwrap();
        assert!(a.rootfs.join("bin/busybox").is_file());
        assert!(a.rootfs.join("bin/sh").exists() && a.rootfs.join("bin/nc").exists());
        let b = store.ensure("busybox").unwrap();
        assert_eq!(a, b);
    } else {
        assert!(
            std::env::var("JETRUN_REQUIRE_OCI").as_deref() != Ok("1"),
            "JETRUN_REQUIRE_OCI=1 but {} is missing",
            jetrun_runner::image::BUSYBOX_BIN
        );
        eprintln!(
            "SKIP busybox image: {} missing",
            jetrun_runner::image::BUSYBOX_BIN
        );
    }
    let h = store.ensure("host").unwrap();
    assert!(h.config.binds.iter().any(|b| b.source == Path::new("/usr")));
    assert!(h.rootfs.join("etc/passwd").is_file());
    let n = store.list().unwrap().len();
    store.ensure("host").unwrap();
    assert_eq!(store.list().unwrap().len(), n);
}

#[test]
fn tail_of_a_1gb_sparse_log_is_constant_time() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.log");
    let mut f = std::fs::File::create(&p).unwrap();
    f.set_len(1 << 30).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    // A newline ends the zero run, so the sparse part counts as one (long) line.
    writeln!(f).unwrap();
    for i in 0..1000 {
        writeln!(f, "line {i}").unwrap();
    }
    drop(f);
    assert!(std::fs::metadata(&p).unwrap().len() > 1 << 30);
    let small = d.path().join("small.log");
    std::fs::write(
        &small,
        (0..1000).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();

    let t0 = Instant::now();
    let lines = logs::tail(&p, 100).unwrap();
    let big = t0.elapsed();
    let t0 = Instant::now();
    let small_lines = logs::tail(&small, 100).unwrap();
    let little = t0.elapsed();
    println!("tail -n 100: 1 GiB log {big:?}, 8 KB log {little:?}");
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0], "line 900");
    assert_eq!(lines[99], "line 999");
    assert_eq!(lines, small_lines);
    assert!(big.as_millis() < 200, "tail of a 1 GiB log took {big:?}");
}
