//! The lease log's files: segments of sequence-numbered, checksummed records appended
//! in order, read back up to the first torn or corrupt record.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// The first bytes of every segment (format version 1).
const MAGIC: &[u8; 8] = b"GB10LLG1";
/// Where a segment's first record starts.
pub const HEADER_LEN: u64 = MAGIC.len() as u64;
/// Sequence number (8) and payload length (2) before the payload, checksum (8) after.
const HEAD: usize = 10;
const TAIL: usize = 8;

/// One record read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Appends record `seq` holding `payload` (at most 64 KiB) to `buf`.
pub fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let start = buf.len();
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&payload[..usize::from(len)]);
    let check = fnv1a(&buf[start..]);
    buf.extend_from_slice(&check.to_be_bytes());
}

/// The records of one segment in file order, up to the first one that is cut short or
/// fails its checksum (what a crash in the middle of an append leaves at the tail).
pub fn read(path: &Path) -> io::Result<Vec<Record>> {
    let bytes = fs::read(path)?;
    let mut records = Vec::new();
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Ok(records);
    }
    let mut at = MAGIC.len();
    while let Some(head) = bytes.get(at..at + HEAD) {
        let seq = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
        let len = usize::from(u16::from_be_bytes([head[8], head[9]]));
        let Some(tail) = bytes.get(at + HEAD + len..at + HEAD + len + TAIL) else {
            break;
        };
        let check = u64::from_be_bytes(tail.try_into().unwrap_or_default());
        if fnv1a(&bytes[at..at + HEAD + len]) != check {
            break;
        }
        records.push(Record {
            seq,
            payload: bytes[at + HEAD..at + HEAD + len].to_vec(),
        });
        at += HEAD + len + TAIL;
    }
    Ok(records)
}

/// The segments in `dir` by the sequence number of their first record (from the
/// name), oldest first; none when `dir` does not exist.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let hex = name
                .to_str()?
                .strip_prefix("leases-")?
                .strip_suffix(".log")?;
            Some((u64::from_str_radix(hex, 16).ok()?, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Creates the segment whose first record is `first_seq`, header written and the file
/// and its directory entry on disk, ready for appends.
pub fn create(dir: &Path, first_seq: u64) -> io::Result<(File, PathBuf)> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("leases-{first_seq:016x}.log"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    // A new file is only found after a crash if its directory entry is on disk too.
    File::open(dir)?.sync_all()?;
    Ok((file, path))
}

/// FNV-1a: enough to tell a torn or half-written record from a whole one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let dir = std::env::temp_dir().join(format!("gb10-log-{}", std::process::id()));
        let (mut file, path) = create(&dir, 7).unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"first");
        encode(&mut buf, 8, b"");
        encode(&mut buf, 9, &[0xab; 300]);
        file.write_all(&buf).unwrap();
        let whole = read(&path).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(
            whole[0],
            Record {
                seq: 7,
                payload: b"first".to_vec()
            }
        );
        assert_eq!(whole[2].payload.len(), 300);
        // Every cut inside the last record loses that record only.
        let full = fs::read(&path).unwrap();
        for cut in full.len() - 300 - HEAD - TAIL + 1..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(read(&path).unwrap().len(), 2, "cut at {cut}");
        }
        // A flipped bit fails the checksum.
        let mut bad = full.clone();
        bad[MAGIC.len() + HEAD + 1] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(read(&path).unwrap().is_empty());
        assert_eq!(segments(&dir).unwrap(), vec![(7, path)]);
        fs::remove_dir_all(&dir).unwrap();
        assert!(segments(&dir).unwrap().is_empty());
    }
}
