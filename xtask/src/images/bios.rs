//! BIOS boot code for the lab's amd64 disks: GRUB's i386-pc boot sector in the protective
//! MBR and its core image in a GPT BIOS boot partition, laid out as `grub-bios-setup`
//! lays them out, so SeaBIOS (and a PC in legacy mode) boots the same root as UEFI does.
use std::{
    fs::OpenOptions,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::exec;

/// The BIOS boot partition's first and last sector: the room between the GPT's entries
/// (sectors 2–33) and the first partition at 1 MiB.
pub const PARTITION: (u64, u64) = (34, 2047);

const SECTOR: usize = 512;

/// Where boot.img keeps the sector its core image starts at (GRUB's
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img's check that the BIOS passed a hard disk in DL; buggy BIOSes pass other
/// values, so grub-bios-setup turns it into two NOPs, as done here.
const DRIVE_CHECK: usize = 0x66;
/// The end of boot.img's code: the disk signature and partition table follow and stay.
const CODE_END: usize = 0x1b8;
/// The segment the rest of core.img is loaded at (`GRUB_BOOT_I386_PC_KERNEL_SEG` +
/// one sector, in paragraphs).
const LOAD_SEGMENT: u16 = 0x820;

/// GRUB modules in the core image: everything the root's grub.cfg uses, since the
/// disk holds no module directory for GRUB to load more from.
const MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "ext2",
    "search_fs_uuid",
    "normal",
    "serial",
    "terminal",
    "echo",
    "cat",
    "sleep",
    "test",
    "linux",
];

/// Builds a core image from `modules_dir` (Debian's `usr/lib/grub/i386-pc`) that finds
/// the root by `root_uuid` and reads its `/boot/grub/grub.cfg`, on the serial console
/// (a lab VM has no screen; a real machine's console is both), and writes it with
/// boot.img into `disk` (a GPT disk with a BIOS boot partition at [`PARTITION`]).
pub fn install(
    disk: &Path,
    modules_dir: &Path,
    root_uuid: &str,
    work: &Path,
) -> anyhow::Result<()> {
    let early = work.join("bios-early.cfg");
    std::fs::write(
        &early,
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial console\n\
             terminal_output serial console\nsearch.fs_uuid {root_uuid} root\n\
             set prefix=($root)/boot/grub\n"
        ),
    )?;
    let core = work.join("core.img");
    exec(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "/boot/grub", "-d"])
            .arg(modules_dir)
            .arg("-c")
            .arg(&early)
            .arg("-o")
            .arg(&core)
            .args(MODULES),
    )
    .context("grub-mkimage (apt-get install grub-common)")?;
    let mut core = std::fs::read(&core)?;
    std::fs::remove_file(work.join("core.img"))?;
    std::fs::remove_file(&early)?;
    let boot = std::fs::read(modules_dir.join("boot.img")).context("boot.img")?;
    ensure!(boot.len() == SECTOR, "boot.img is {} bytes", boot.len());
    core.resize(core.len().div_ceil(SECTOR) * SECTOR, 0);
    let sectors = (core.len() / SECTOR) as u64;
    let room = PARTITION.1 - PARTITION.0 + 1;
    if sectors > room {
        bail!("the core image takes {sectors} sectors; the BIOS boot partition holds {room}");
    }
    // diskboot.img (core's first sector) loads the rest from the one block list at its
    // end: start sector, count, segment.
    let list = SECTOR - 12;
    core[list..list + 8].copy_from_slice(&(PARTITION.0 + 1).to_le_bytes());
    core[list + 8..list + 10].copy_from_slice(&u16::try_from(sectors - 1)?.to_le_bytes());
    core[list + 10..list + 12].copy_from_slice(&LOAD_SEGMENT.to_le_bytes());

    let mut f = OpenOptions::new().read(true).write(true).open(disk)?;
    let mut mbr = [0u8; SECTOR];
    f.read_exact(&mut mbr)?;
    ensure!(
        mbr[510..] == [0x55, 0xaa] && mbr[0x1c2] == 0xee,
        "{}: no protective MBR (sgdisk first)",
        disk.display()
    );
    mbr[..CODE_END].copy_from_slice(&boot[..CODE_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&PARTITION.0.to_le_bytes());
    mbr[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.seek(SeekFrom::Start(PARTITION.0 * SECTOR as u64))?;
    f.write_all(&core)?;
    Ok(())
}
