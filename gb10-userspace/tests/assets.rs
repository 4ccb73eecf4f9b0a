//! `gb10-provision assets` against real inputs: Debian packages from apt (amd64 and
//! arm64), packages built by `dpkg-deb` (zstd and gzip members, an older version, a
//! debian-installer netboot layout, a broken one), and ISOs built by xorriso in the
//! Ubuntu live-server layout (Rock Ridge, Joliet only, plain ISO 9660). Every placed
//! file is compared with what dpkg-deb or the ISO's source tree holds; `check` is clean
//! after it and warns before.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use gb10_lab::{require_tool, run, write_file};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

/// A scratch directory, removed on drop unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gb10-assets-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn assets(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("assets")
        .args(args)
        .env_remove("GB10_CONFIG")
        .env_remove("GB10_DATA_PATH")
        .output()
        .expect("running gb10-provision assets")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "assets failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(&out)))
}

/// sha256 by the reference tool.
fn sha256sum(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What each destination got, from `--json` output: path → (outcome, origin member).
fn outcomes(v: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for f in v["files"].as_array().unwrap() {
        for p in f["paths"].as_array().unwrap() {
            out.push((
                p["path"].as_str().unwrap().to_owned(),
                p["outcome"].as_str().unwrap().to_owned(),
                f["origin"]["member"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

/// `dpkg-deb -x` of `deb` into a new directory under `dir`.
fn unpack(deb: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(deb.file_stem().unwrap());
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&out));
    out
}

/// A package built by dpkg-deb: `files` (path → bytes) under `root`, compressed with `z`.
fn build_deb(
    dir: &Path,
    name: &str,
    version: &str,
    arch: &str,
    z: &str,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let root = dir.join(format!("build-{name}-{version}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    write_file(
        &root.join("DEBIAN/control"),
        &format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: test <t@example.invalid>\nDescription: test package\n"
        ),
    );
    for (path, bytes) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    let deb = dir.join(format!("{name}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", &format!("-Z{z}"), "--build"])
        .arg(&root)
        .arg(&deb));
    deb
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    gb10_lab::pseudo_random(seed, len)
}

fn all_tools(test: &str, tools: &[(&str, &str)]) -> bool {
    tools.iter().all(|(t, p)| require_tool(test, t, p))
}

/// The packages from apt for both architectures, newest shim, GRUB, iPXE and kernels.
fn real_debs() -> (PathBuf, PathBuf) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-debs");
    let mut dirs = Vec::new();
    for a in ["amd64", "arm64"] {
        let mut list = vec![
            gb10_lab::debs::cloud_kernel_package(a).unwrap(),
            format!("shim-signed:{a}"),
            format!("grub-efi-{a}-signed:{a}"),
        ];
        if a == "amd64" {
            list.push("ipxe".into());
        }
        let dir = base.join(a);
        gb10_lab::debs::apt_download(&dir, &list).unwrap();
        dirs.push(dir);
    }
    (dirs.remove(0), dirs.remove(0))
}

fn find(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

/// From apt's packages for amd64 and arm64 plus dpkg-deb-built ones: every file is the
/// one dpkg-deb unpacks; a re-run changes nothing; a changed file is put back; `check`
/// is clean after and warns before.
#[test]
fn from_packages_amd64_and_arm64() {
    if !all_tools(
        "assets::packages",
        &[
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
            ("sha256sum", "coreutils"),
        ],
    ) {
        return;
    }
    let (amd64, arm64) = real_debs();
    let s = Scratch::new("debs");
    let data = s.0.join("data");
    // Before: `check` names what the default configuration points at.
    let check = |data: &Path| {
        let out = Command::new(BIN)
            .args(["check", "--lan-iface", "lo", "--data-path"])
            .arg(data)
            .env_remove("GB10_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::create_dir_all(&data).unwrap();
    write_file(
        &data.join("inventory.toml"),
        "[profiles.debian]\nkernel = \"amd64/vmlinuz\"\ninitrd = \"amd64/initrd.img\"\nvars = { grub_fetch = \"tftp\" }\n\
         [profiles.dgx]\nkernel = \"arm64/vmlinuz\"\ninitrd = \"arm64/initrd.img\"\n",
    );
    let before = check(&data);
    for f in [
        "tftp/undionly.kpxe",
        "tftp/ipxe.efi",
        "tftp/shimaa64.efi",
        "tftp/grubaa64.efi",
        "www/amd64/vmlinuz",
        "tftp/amd64/initrd.img",
        "www/arm64/initrd.img",
    ] {
        assert!(
            before.contains(&format!("{}/{f} is missing", data.display())),
            "check did not name {f}:\n{before}"
        );
    }

    // Beside apt's packages: an older shim (passed over), and a debian-installer netboot
    // package for arm64 (zstd) whose kernel and initrd win over the linux-image kernel.
    let extra = s.0.join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let old_shim = noise(1, 5000);
    build_deb(
        &extra,
        "shim-signed",
        "1.0",
        "amd64",
        "gzip",
        &[("usr/lib/shim/shimx64.efi.signed", &old_shim)],
    );
    let (di_linux, di_initrd) = (noise(2, 3 << 20), noise(3, 1 << 20));
    let di_base = "usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64";
    build_deb(
        &extra,
        "debian-installer-12-netboot-arm64",
        "20230607+deb12u15",
        "all",
        "zstd",
        &[
            (&format!("{di_base}/linux"), &di_linux),
            (&format!("{di_base}/initrd.gz"), &di_initrd),
        ],
    );
    let initrd = s.0.join("initrd-amd64.img");
    std::fs::write(&initrd, noise(4, 100_000)).unwrap();
    let args = [
        amd64.to_str().unwrap(),
        arm64.to_str().unwrap(),
        extra.to_str().unwrap(),
        &format!("--initrd=amd64={}", initrd.display()),
        "--data-path",
        data.to_str().unwrap(),
        "--json",
    ];
    let first = ok(assets(&args));
    let got = outcomes(&first);
    assert!(got.iter().all(|(_, o, _)| o == "placed"), "{got:?}");

    // Each file is what the reference unpacker gives.
    let ref_dir = s.0.join("ref");
    let shim = unpack(&find(&amd64, "shim-signed_"), &ref_dir);
    let grub = unpack(&find(&amd64, "grub-efi-amd64-signed_"), &ref_dir);
    let ipxe = unpack(&find(&amd64, "ipxe_"), &ref_dir);
    let kernel = unpack(&find(&amd64, "linux-image-"), &ref_dir);
    let shim_a = unpack(&find(&arm64, "shim-signed_"), &ref_dir);
    let grub_a = unpack(&find(&arm64, "grub-efi-arm64-signed_"), &ref_dir);
    let vmlinuz = std::fs::read_dir(kernel.join("boot"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .unwrap();
    let di_linux_file = s.0.join("di-linux");
    std::fs::write(&di_linux_file, &di_linux).unwrap();
    let di_initrd_file = s.0.join("di-initrd");
    std::fs::write(&di_initrd_file, &di_initrd).unwrap();
    let expect: Vec<(&str, PathBuf)> = vec![
        (
            "tftp/shimx64.efi",
            shim.join("usr/lib/shim/shimx64.efi.signed"),
        ),
        (
            "www/shimx64.efi",
            shim.join("usr/lib/shim/shimx64.efi.signed"),
        ),
        (
            "tftp/grubx64.efi",
            grub.join("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
        ),
        // usr/lib/ipxe/ipxe.efi is a symlink to /boot/ipxe.efi inside the package.
        ("tftp/ipxe.efi", ipxe.join("boot/ipxe.efi")),
        ("www/snponly.efi", ipxe.join("usr/lib/ipxe/snponly.efi")),
        (
            "tftp/undionly.kpxe",
            ipxe.join("usr/lib/ipxe/undionly.kpxe"),
        ),
        ("tftp/amd64/vmlinuz", vmlinuz.clone()),
        ("www/amd64/vmlinuz", vmlinuz),
        ("www/amd64/initrd.img", initrd.clone()),
        (
            "tftp/shimaa64.efi",
            shim_a.join("usr/lib/shim/shimaa64.efi.signed"),
        ),
        (
            "www/grubaa64.efi",
            grub_a.join("usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
        ),
        ("www/arm64/vmlinuz", di_linux_file),
        ("tftp/arm64/initrd.img", di_initrd_file),
    ];
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("boot-assets.json")).unwrap()).unwrap();
    for (dest, reference) in &expect {
        let placed = data.join(dest);
        let sum = sha256sum(&placed);
        assert_eq!(
            sum,
            sha256sum(reference),
            "{dest} differs from {}",
            reference.display()
        );
        let entry = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == *dest)
            .unwrap_or_else(|| panic!("{dest} not in the manifest"));
        assert_eq!(entry["sha256"].as_str(), Some(sum.as_str()), "{dest}");
    }
    assert_eq!(
        manifest["files"].as_array().unwrap().len(),
        got.len(),
        "one manifest entry per placed file"
    );
    let notes = first["notes"].to_string();
    assert!(
        notes.contains("shim-signed 1.0") && notes.contains("passed over"),
        "{notes}"
    );
    assert!(
        notes.contains("linux-image-") && notes.contains("debian-installer-12-netboot-arm64"),
        "{notes}"
    );
    assert_eq!(check(&data), "", "check still warns after assets");

    // Again: nothing changes, not even the manifest's bytes or the files' inodes.
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| std::fs::metadata(data.join(p)).unwrap().ino();
    let (shim_ino, manifest_bytes) = (
        ino("tftp/shimx64.efi"),
        std::fs::read(data.join("boot-assets.json")).unwrap(),
    );
    let again = ok(assets(&args));
    assert!(
        outcomes(&again).iter().all(|(_, o, _)| o == "unchanged"),
        "{again}"
    );
    assert_eq!(again["manifest_written"], false);
    assert_eq!(ino("tftp/shimx64.efi"), shim_ino);
    assert_eq!(
        std::fs::read(data.join("boot-assets.json")).unwrap(),
        manifest_bytes
    );

    // A file changed by hand (written in place, as `cp` does) is put back; its twin in
    // the other root was never touched and stays.
    std::fs::write(data.join("www/shimaa64.efi"), b"not shim").unwrap();
    let fixed = ok(assets(&args));
    let changed: Vec<_> = outcomes(&fixed)
        .into_iter()
        .filter(|(_, o, _)| o != "unchanged")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].0, "www/shimaa64.efi");
    assert_eq!(changed[0].1, "replaced");
    assert_eq!(
        sha256sum(&data.join("www/shimaa64.efi")),
        sha256sum(&shim_a.join("usr/lib/shim/shimaa64.efi.signed"))
    );
}

/// A missing file names the package or ISO path it expected, and nothing is written.
#[test]
fn missing_files_are_named() {
    if !all_tools(
        "assets::missing",
        &[("dpkg-deb", "dpkg"), ("xorriso", "xorriso")],
    ) {
        return;
    }
    let s = Scratch::new("missing");
    let data = s.0.join("data");
    let debs = s.0.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    // A shim package without the shim; a GRUB; a kernel without an initrd.
    build_deb(
        &debs,
        "shim-signed",
        "9.9",
        "amd64",
        "xz",
        &[("usr/share/doc/shim-signed/README", b"x")],
    );
    build_deb(
        &debs,
        "grub-efi-amd64-signed",
        "1",
        "amd64",
        "xz",
        &[(
            "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
            b"grub",
        )],
    );
    build_deb(
        &debs,
        "linux-image-6.1.0-1-amd64",
        "6.1.1-1",
        "amd64",
        "xz",
        &[("boot/vmlinuz-6.1.0-1-amd64", b"kernel")],
    );
    build_deb(
        &debs,
        "unrelated",
        "1",
        "amd64",
        "xz",
        &[("usr/bin/x", b"x")],
    );
    let out = assets(&[
        debs.to_str().unwrap(),
        "--data-path",
        data.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("nothing changed"), "{t}");
    assert!(
        t.contains("shim-signed 9.9") && t.contains("has no usr/lib/shim/shimx64.efi.signed"),
        "{t}"
    );
    assert!(
        t.contains("amd64 initrd: none found") && t.contains("--initrd amd64=FILE"),
        "{t}"
    );
    assert!(
        !data.join("tftp").exists() && !data.join("boot-assets.json").exists(),
        "something was written"
    );

    // An ISO with the loaders but no casper/initrd.
    let tree = s.0.join("iso");
    for (p, b) in [
        ("casper/vmlinuz", &b"k"[..]),
        ("EFI/boot/bootx64.efi", b"s"),
        ("EFI/boot/grubx64.efi", b"g"),
    ] {
        std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
        std::fs::write(tree.join(p), b).unwrap();
    }
    let iso = s.0.join("broken.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-r", "-o"])
        .arg(&iso)
        .arg(&tree));
    let out = assets(&[iso.to_str().unwrap(), "--data-path", data.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("casper/initrd is not in the image (that directory holds: vmlinuz)"),
        "{t}"
    );
    // Not an ISO at all.
    let junk = s.0.join("junk.img");
    std::fs::write(&junk, noise(9, 70_000)).unwrap();
    let out = assets(&[
        junk.to_str().unwrap(),
        "--data-path",
        data.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("not an ISO 9660 image"),
        "{}",
        text(&out)
    );
}

/// ISOs in the Ubuntu live-server / DGX OS layout, written by xorriso three ways: the
/// files come out byte for byte, the architecture is read from the loader's name, and
/// `--serve-iso` puts the image beside its kernel.
#[test]
fn from_ubuntu_layout_isos() {
    if !all_tools(
        "assets::iso",
        &[("xorriso", "xorriso"), ("sha256sum", "coreutils")],
    ) {
        return;
    }
    let s = Scratch::new("iso");
    // (name, arch, xorriso naming flags)
    for (n, (name, arch, flags)) in [
        (
            "ubuntu-24.04-live-server-amd64",
            "amd64",
            &["-r", "-J", "-joliet-long"][..],
        ),
        ("dgx-os-arm64", "arm64", &["-J"][..]),
        ("plain-arm64", "arm64", &["-iso-level", "2"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let efi = if arch == "amd64" { "x64" } else { "aa64" };
        let tree = s.0.join(format!("tree-{name}"));
        let files: Vec<(String, Vec<u8>)> = vec![
            ("casper/vmlinuz".into(), noise(10 + n as u64, 9 << 20)),
            ("casper/initrd".into(), noise(20 + n as u64, 5 << 20)),
            (
                format!("EFI/boot/boot{efi}.efi"),
                noise(30 + n as u64, 950_000),
            ),
            (
                format!("EFI/boot/grub{efi}.efi"),
                noise(40 + n as u64, 2_300_000),
            ),
            (
                format!("EFI/boot/mm{efi}.efi"),
                noise(50 + n as u64, 800_000),
            ),
            ("casper/filesystem.squashfs".into(), noise(60, 10_000)),
            (
                ".disk/info".into(),
                format!("Ubuntu-Server 24.04 LTS \"Noble Numbat\" - Release {arch}").into_bytes(),
            ),
        ];
        for (p, b) in &files {
            std::fs::create_dir_all(tree.join(p).parent().unwrap()).unwrap();
            std::fs::write(tree.join(p), b).unwrap();
        }
        let iso = s.0.join(format!("{name}.iso"));
        run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "Ubuntu-Server 24.04 LTS"])
            .args(flags)
            .arg("-o")
            .arg(&iso)
            .arg(&tree));
        let data = s.0.join(format!("data-{name}"));
        let args = [
            iso.to_str().unwrap(),
            "--serve-iso",
            "--data-path",
            data.to_str().unwrap(),
            "--json",
        ];
        let v = ok(assets(&args));
        let got = outcomes(&v);
        assert!(got.iter().all(|(_, o, _)| o == "placed"), "{name}: {got:?}");
        for (dest, src) in [
            (
                format!("tftp/shim{efi}.efi"),
                format!("EFI/boot/boot{efi}.efi"),
            ),
            (
                format!("www/grub{efi}.efi"),
                format!("EFI/boot/grub{efi}.efi"),
            ),
            (format!("tftp/{arch}/vmlinuz"), "casper/vmlinuz".into()),
            (format!("www/{arch}/initrd.img"), "casper/initrd".into()),
        ] {
            assert_eq!(
                sha256sum(&data.join(&dest)),
                sha256sum(&tree.join(&src)),
                "{name}: {dest} is not {src}"
            );
        }
        assert_eq!(
            sha256sum(&data.join(format!("www/{arch}/{name}.iso"))),
            sha256sum(&iso),
            "{name}: the served image"
        );
        let again = ok(assets(&args));
        assert!(
            outcomes(&again).iter().all(|(_, o, _)| o == "unchanged"),
            "{name}: {again}"
        );
    }
}
