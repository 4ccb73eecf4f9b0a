//! The marker image: a disk laid out as the OS image is (GPT; an ESP with Debian's signed
//! shim and GRUB; an ext4 root with `/etc/cloud`; on amd64 also GRUB's BIOS boot code,
//! see [`super::bios`]), whose GRUB prints a line the e2e
//! scenarios read instead of booting a kernel. It takes seconds to build (no mmdebstrap)
//! and tens of seconds to write, so the local-boot and failure scenarios run in minutes:
//! the install environment streams it to disk, checks it and points its cloud-init at
//! the server exactly as it does the OS image; only what boots from the disk differs.
use std::{path::Path, time::Instant};

use anyhow::Context as _;

use super::{
    fresh, mib,
    os_image::{self, Disk, OsImage},
};
use crate::e2e::assets::Arch;

/// The line the marker disk's GRUB prints on the serial console.
pub const BOOTED: &str = "gb10-e2e: booted from the local disk (marker image)";

/// The last line the marker disk's GRUB prints: what came before it is all there.
pub const END: &str = "gb10-e2e: marker end";

/// What GRUB prints when the install environment left no cloud-init config on the disk.
pub const NO_SEED: &str = "gb10-e2e: no cloud-init config from the installer";

/// Random bytes in the root, so the image streams long enough to be cut halfway and
/// its compressed form is not trivially small.
const FILLER_MIB: usize = 16;

/// Bumped when what goes into the image changes.
const RECIPE: &str = "marker v2 (BIOS boot code on amd64)\n";

/// The root's GRUB config: the marker line, then the cloud-init config the installer
/// wrote (its `seedfrom` names this server), then it waits to be stopped.
fn grub_cfg() -> String {
    format!(
        "set timeout=0\n\
         echo \"{BOOTED}\"\n\
         if [ -f /etc/cloud/cloud.cfg.d/90-gb10-provision.cfg ]; then\n  \
         cat /etc/cloud/cloud.cfg.d/90-gb10-provision.cfg\n\
         else\n  echo \"{NO_SEED}\"\nfi\n\
         echo \"{END}\"\n\
         sleep 3600\n"
    )
}

/// Builds (or finds cached) the marker image for `arch` under
/// `target/images/<arch>/marker`, with shim and GRUB from `efi_tree` (the e2e assets'
/// unpacked packages).
pub fn build(arch: Arch, efi_tree: &Path) -> anyhow::Result<OsImage> {
    let dir = super::dir().join(arch.debian()).join("marker");
    let name = format!("marker-{}", arch.debian());
    let image = OsImage::in_dir(&dir, &name);
    let stamp = dir.join(".stamp");
    if fresh(&stamp, RECIPE) && image.zstd.exists() && image.gzip.exists() {
        return Ok(image);
    }
    let started = Instant::now();
    let _ = std::fs::remove_file(&stamp);
    let tree = dir.join("root");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("etc/cloud/cloud.cfg.d"))?;
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::write(tree.join("boot/grub/grub.cfg"), grub_cfg())?;
    let mut filler = vec![0u8; FILLER_MIB << 20];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("/dev/urandom")?,
        &mut filler,
    )?;
    std::fs::write(tree.join("filler.bin"), filler)?;
    let root_uuid = os_image::uuid()?;
    os_image::assemble(
        &Disk {
            arch,
            efi_tree,
            root_tree: &tree,
            root_uuid: &root_uuid,
            room_mib: 2,
            bios: arch == Arch::Amd64,
        },
        &dir,
        &image,
    )?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&stamp, RECIPE)?;
    println!(
        "images: {} marker image built in {:.1} s: raw {:.0} MiB, gzip {:.0} MiB, zstd {:.0} MiB",
        arch.debian(),
        started.elapsed().as_secs_f64(),
        mib(&image.raw),
        mib(&image.gzip),
        mib(&image.zstd),
    );
    Ok(image)
}
