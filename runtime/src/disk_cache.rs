//! The on-disk cache of compiled CPU kernels: machine code that survives the
//! process, so that a model's kernels compile once per machine, not per run.
//!
//! An entry is keyed by its whole key text (the CPU backend's
//! [`host_fingerprint`](mixc_backend_cpu::host_fingerprint) — backend sources,
//! Cranelift, target ISA and flags —, the mixc version, and the kernel's
//! printed text); the file name is a hash of it. The file holds
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `MIXCKRN\0` |
//! | 4 | format version (little endian, like every number here) |
//! | 4 | reserved, 0 |
//! | 8 | key length |
//! | 8 | code length |
//! | 8 | parameters of the kernel |
//! | 8 | frame bytes of the kernel |
//! | 8 | checksum (FNV-1a over the fields above and the bytes below) |
//! | key length | the key text |
//! | code length | the machine code |
//!
//! An entry is used only when every field checks: the exact length, magic,
//! version, the key text byte for byte (a hash collision or a stale entry is a
//! miss), and the checksum (a torn or corrupt file is a miss). A miss compiles
//! the kernel and writes the entry again. The checksum guards against
//! accidents, not against someone able to write the cache folder (who could
//! as well change the mixc binary).
//!
//! Writes go to a temporary file renamed into place, so that readers never
//! see half an entry; failing to write is not an error (the cache is an
//! optimization).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: [u8; 8] = *b"MIXCKRN\0";
const FORMAT: u32 = 1;
const HEADER: usize = 56;
/// Entries larger than this are not read (no kernel comes near it).
const MAX_ENTRY: u64 = 1 << 30;

/// A kernel as the cache holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub code: Vec<u8>,
    pub params: usize,
    pub frame_bytes: usize,
}

/// A folder of cached kernels.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

fn fnv(bytes: &[u8]) -> u64 {
    mixc_backend_cpu::fnv1a64(bytes)
}

/// The header fields a checksum covers, then the key and the code.
fn checksum(key: &[u8], code: &[u8], params: u64, frame: u64) -> u64 {
    let mut meta = Vec::with_capacity(48);
    meta.extend_from_slice(&MAGIC);
    meta.extend_from_slice(&FORMAT.to_le_bytes());
    meta.extend_from_slice(&0u32.to_le_bytes());
    for x in [key.len() as u64, code.len() as u64, params, frame] {
        meta.extend_from_slice(&x.to_le_bytes());
    }
    let parts = [fnv(&meta), fnv(key), fnv(code)];
    fnv(&parts.iter().flat_map(|p| p.to_le_bytes()).collect::<Vec<u8>>())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The bytes of an entry file.
pub fn encode(key: &str, code: &[u8], params: usize, frame_bytes: usize) -> Vec<u8> {
    let (params, frame) = (params as u64, frame_bytes as u64);
    let mut out = Vec::with_capacity(HEADER + key.len() + code.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for x in [key.len() as u64, code.len() as u64, params, frame, checksum(key.as_bytes(), code, params, frame)] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(code);
    out
}

/// The entry in `bytes` when it is whole, intact and stored under `key`.
pub fn decode(bytes: &[u8], key: &str) -> Option<Entry> {
    if bytes.get(..8)? != MAGIC || u32_at(bytes, 8)? != FORMAT || u32_at(bytes, 12)? != 0 {
        return None;
    }
    let (key_len, code_len) = (u64_at(bytes, 16)?, u64_at(bytes, 24)?);
    let (params, frame, sum) = (u64_at(bytes, 32)?, u64_at(bytes, 40)?, u64_at(bytes, 48)?);
    let total = (HEADER as u64).checked_add(key_len)?.checked_add(code_len)?;
    if total != bytes.len() as u64 || key_len != key.len() as u64 || code_len == 0 {
        return None;
    }
    let key_end = HEADER + key.len();
    let (stored_key, code) = (bytes.get(HEADER..key_end)?, bytes.get(key_end..)?);
    if stored_key != key.as_bytes() || checksum(stored_key, code, params, frame) != sum {
        return None;
    }
    Some(Entry {
        code: code.to_vec(),
        params: usize::try_from(params).ok()?,
        frame_bytes: usize::try_from(frame).ok()?,
    })
}

impl DiskCache {
    /// A cache in `dir` (created on the first write).
    pub fn at(dir: impl Into<PathBuf>) -> DiskCache {
        DiskCache { dir: dir.into() }
    }

    /// This user's cache, from the environment: none when
    /// `MIXC_NO_DISK_CACHE` is set (to anything but `0` or nothing), else
    /// `$MIXC_HOME/kernels`, `$XDG_CACHE_HOME/mixc/kernels` or
    /// `~/.cache/mixc/kernels`, the first whose variable is set.
    pub fn from_env() -> Option<DiskCache> {
        Self::locate(|name| std::env::var_os(name).map(PathBuf::from))
    }

    /// [`DiskCache::from_env`] with the environment as a function.
    pub fn locate(var: impl Fn(&str) -> Option<PathBuf>) -> Option<DiskCache> {
        let set = |name: &str| var(name).filter(|v| !v.as_os_str().is_empty());
        if set("MIXC_NO_DISK_CACHE").is_some_and(|v| v.as_os_str() != "0") {
            return None;
        }
        if let Some(home) = set("MIXC_HOME") {
            return Some(DiskCache::at(home.join("kernels")));
        }
        // The XDG spec: relative paths are invalid and ignored.
        if let Some(xdg) = set("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return Some(DiskCache::at(xdg.join("mixc").join("kernels")));
        }
        set("HOME").map(|h| DiskCache::at(h.join(".cache").join("mixc").join("kernels")))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of `key` lives.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{:016x}.kernel", fnv(key.as_bytes())))
    }

    /// The entry stored under `key`, if there is a whole and intact one.
    pub fn load(&self, key: &str) -> Option<Entry> {
        let path = self.path_of(key);
        let len = std::fs::metadata(&path).ok()?.len();
        if len > MAX_ENTRY {
            return None;
        }
        decode(&std::fs::read(&path).ok()?, key)
    }

    /// Stores an entry under `key`, replacing what was there.
    pub fn store(&self, key: &str, code: &[u8], params: usize, frame_bytes: usize) -> std::io::Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_of(key);
        let tmp = path.with_extension(format!("{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&encode(key, code, params, frame_bytes))?;
            f.sync_data()
        });
        match written.and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_damage() {
        let key = "fingerprint\nmixc 0.1.0\nkernel k { }";
        let code: Vec<u8> = (0..200u8).collect();
        let bytes = encode(key, &code, 3, 4096);
        let want = Entry { code: code.clone(), params: 3, frame_bytes: 4096 };
        assert_eq!(decode(&bytes, key), Some(want));
        // Another key (a stale entry, or a file-name collision).
        assert_eq!(decode(&bytes, "fingerprint\nmixc 0.1.1\nkernel k { }"), None);
        // Truncated anywhere, or extended.
        for n in [0, 7, 20, HEADER, HEADER + key.len(), bytes.len() - 1] {
            assert_eq!(decode(&bytes[..n], key), None, "truncated to {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer, key), None);
        // Any flipped bit.
        for i in (0..bytes.len()).step_by(3) {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << (i % 8);
            assert_eq!(decode(&bad, key), None, "bit flipped in byte {i}");
        }
    }

    #[test]
    fn location_follows_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| PathBuf::from(v))
        };
        let dir = |vars| DiskCache::locate(env(vars)).map(|c| c.dir().to_path_buf());
        assert_eq!(dir(&[("HOME", "/h")]), Some(PathBuf::from("/h/.cache/mixc/kernels")));
        assert_eq!(dir(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]), Some(PathBuf::from("/x/mixc/kernels")));
        assert_eq!(dir(&[("HOME", "/h"), ("XDG_CACHE_HOME", "rel")]), Some(PathBuf::from("/h/.cache/mixc/kernels")));
        assert_eq!(dir(&[("XDG_CACHE_HOME", "/x"), ("MIXC_HOME", "/m")]), Some(PathBuf::from("/m/kernels")));
        assert_eq!(dir(&[("MIXC_HOME", "/m"), ("MIXC_NO_DISK_CACHE", "1")]), None);
        assert_eq!(dir(&[("MIXC_HOME", "/m"), ("MIXC_NO_DISK_CACHE", "0")]), Some(PathBuf::from("/m/kernels")));
        assert_eq!(dir(&[]), None);
    }
}
