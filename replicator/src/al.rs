//! The activity log's journal and the saved out-of-sync bitmap: the files
//! behind the core's [`crate::core::Persist::Al`] and
//! [`crate::core::Persist::Bitmap`] updates.
//!
//! `<meta>.al`: a first line `#twinblock-al {json}` naming the node, the
//! resource, the id of the bitmap the log goes with and a random salt
//! (checked at every start as the bitmap's header is; written only by
//! whole rewrites, so never torn), then one line per change, `+E` (extent
//! E joins) or `-E` (leaves), then a space and the CRC32 (8 hex digits) of
//! the header line's CRC32, the line's number after the header and the
//! change: appended and fdatasynced, each append one write. A torn last
//! line (no newline, a beginning of such a line) is ignored on recovery
//! (the extent had not joined yet: its write was not issued; a torn `-12`
//! must not remove extent 1). A whole line that fails its checksum (bit
//! rot, a stray write, a line copied from another log or replayed at
//! another place), or a last line that is not the beginning of one, makes
//! the log unfit: every block counts as out of sync. A tail of zero bytes
//! after the last line (or after a torn one) is a torn append too: a
//! filesystem that extends a file before its data lands (XFS) leaves it
//! in a crash during an append, which had not returned, so its extent's
//! write was not issued (counting it unfit would make every such crash a
//! full resync; a last line zeroed whole by a stray write reads the same,
//! as does a last line the filesystem lost: neither is detectable
//! without a count of lines the appends cannot keep). The corrupt bytes may
//! be the extent's digits or its sign, so the line may have been any
//! extent's joining: no smaller set of extents is safe. Rewritten
//! compactly when long, at every open, and before the next change after a
//! failed append (so that no change is ever appended to a torn line, which
//! would hide it). Logs of earlier formats (no header, or a header of
//! format 1: lines without checksums) are read as before (the lenient
//! [`replay`]) and rewritten in this form at the open.
//!
//! `<meta>.bitmap`: a 4 KiB header (magic, format version, then JSON
//! naming the resource, node, size, block size, words and the file's
//! random id, which `meta` records; CRC32 over it), then the bitmap's
//! 64-bit words, little-endian, by pages of [`PAGE_WORDS`], each followed
//! by 8 bytes: the CRC32 of the id, the page's number and its words.
//! Pages are overwritten in place, each with its checksum in one write,
//! and fdatasynced. A page that fails its checksum at the next start (a
//! write torn by a crash, bit rot, a stray write) counts whole as out of
//! sync: a torn page can only add bits, never clear one, and never stops
//! a start. A file of another node or resource (or of a newer format)
//! refuses the start; one that cannot be trusted otherwise (another size,
//! cut short, a corrupt header, another id than the record's) counts as
//! lost: every block out of sync. The format before headers (the words
//! alone) is read as before when the record names no id, and upgraded.
//! Both files created 0600.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::core::PAGE_WORDS;
use crate::meta::atomic_write;

/// Activity-log extent in production (4 MiB).
pub const EXTENT: u64 = 4 << 20;

/// Journal lines after which the log file is rewritten compactly.
const COMPACT_AFTER: usize = 16 * 1024;

/// `<meta>.<ext>`: the metadata's sibling files (`al`, `bitmap`).
pub fn sibling(meta: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}.{ext}", meta.display()))
}

pub struct AlJournal {
    path: PathBuf,
    /// The file's first line: whose log it is (a new salt at every
    /// rewrite).
    header: AlHeader,
    /// The CRC32 of the header line: every line's checksum starts from it.
    key: u32,
    file: File,
    active: BTreeSet<u64>,
    lines: usize,
    /// An append failed: the file may end in a torn line.
    torn: bool,
}

/// Writes `header` (with a new salt) and `active` as the whole journal at
/// `path`, atomically; returns it open for appending and the header
/// line's CRC32.
fn rewrite(
    path: &Path,
    header: &mut AlHeader,
    active: &BTreeSet<u64>,
) -> std::io::Result<(File, u32)> {
    header.salt = fresh_id();
    let json = serde_json::to_string(&header).map_err(std::io::Error::other)?;
    let head = format!("{AL_MAGIC}{json}\n");
    let key = crc32fast::hash(head.as_bytes());
    let mut text = head;
    for (seq, e) in active.iter().enumerate() {
        push_line(&mut text, key, seq as u64, '+', *e);
    }
    atomic_write(path, text.as_bytes())?;
    Ok((OpenOptions::new().append(true).open(path)?, key))
}

/// A change's checksum: of the header line's CRC32 (`key`), the line's
/// number after the header (`seq`, from 0) and the change (`+12`).
fn line_crc(key: u32, seq: u64, change: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(change.as_bytes());
    h.finalize()
}

/// Appends the line of change `sign` `e` at number `seq` to `text`.
fn push_line(text: &mut String, key: u32, seq: u64, sign: char, e: u64) {
    let change = format!("{sign}{e}");
    let crc = line_crc(key, seq, &change);
    text.push_str(&format!("{change} {crc:08x}\n"));
}

/// A whole line of the checked format: its change (sign, extent) if it is
/// one and passes its checksum at number `seq`.
fn checked_line(line: &str, key: u32, seq: u64) -> Option<(bool, u64)> {
    let (change, crc) = line.split_once(' ')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if crc.len() != 8 || !crc.bytes().all(hex) {
        return None;
    }
    let crc = u32::from_str_radix(crc, 16).ok()?;
    let (join, digits) = match change.as_bytes().first()? {
        b'+' => (true, &change[1..]),
        b'-' => (false, &change[1..]),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let e = digits.parse::<u64>().ok()?;
    (line_crc(key, seq, change) == crc).then_some((join, e))
}

/// Whether `frag` (the text after the last newline) is what a torn append
/// leaves: the beginning of a line of the checked format (or nothing).
fn torn_prefix(frag: &str) -> bool {
    let b = frag.as_bytes();
    let Some((&sign, rest)) = b.split_first() else { return true };
    if sign != b'+' && sign != b'-' {
        return false;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    match rest[digits..].split_first() {
        None => true,
        Some((&b' ', crc)) => {
            digits > 0
                && crc.len() <= 8
                && crc.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        }
        Some(_) => false,
    }
}

/// The extents of a checked journal's lines (`body`: the text after the
/// header line, whose CRC32 is `key`); Err: why the log cannot say which
/// extents may hold writes (a line that fails its checksum, a last line
/// that is not a torn append).
fn replay_checked(body: &str, key: u32) -> Result<BTreeSet<u64>, String> {
    let mut active = BTreeSet::new();
    let (whole, frag) = match body.rfind('\n') {
        Some(end) => (Some(&body[..end]), &body[end + 1..]),
        None => (None, body),
    };
    for (seq, line) in whole.into_iter().flat_map(|w| w.split('\n')).enumerate() {
        match checked_line(line, key, seq as u64) {
            Some((true, e)) => {
                active.insert(e);
            }
            Some((false, e)) => {
                active.remove(&e);
            }
            None => {
                let shown: String = line.chars().take(40).collect();
                return Err(format!(
                    "its line {} ({shown:?}) fails its checksum (bit rot, a stray write, or a \
                     line from elsewhere): which extent it named, and whether it joined or \
                     left, is unknown",
                    seq + 2
                ));
            }
        }
    }
    // (Zero bytes after it: a filesystem that extended the file before
    // the append's data landed, in a crash, XFS's way: the append had not
    // returned, so its extent's write was not issued either.)
    if !torn_prefix(frag.trim_end_matches('\0')) {
        let shown: String = frag.chars().take(40).collect();
        return Err(format!(
            "its last line ({shown:?}) has no newline and is not the beginning of a line (a \
             corrupt byte): which extent it named is unknown"
        ));
    }
    Ok(active)
}

/// The journal's extents: whole lines only (a torn last line has no
/// newline: its extent had not joined, its write was not issued), each a
/// sign and digits. A whole line that is not (a corrupt byte, or changes
/// an older version glued to a torn line, `+4+5`) removes nothing and
/// adds every `+N` in it: an extent may stay in the log for nothing, never
/// leave it by mistake.
fn replay(text: &str) -> BTreeSet<u64> {
    let mut active = BTreeSet::new();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    for (i, line) in whole.lines().enumerate() {
        if i == 0 && line.starts_with(AL_MAGIC) {
            continue;
        }
        let number = |t: &str| digits(t).then(|| t.parse::<u64>().ok()).flatten();
        match (line.strip_prefix('+').and_then(number), line.strip_prefix('-').and_then(number)) {
            (Some(e), _) => {
                active.insert(e);
            }
            (_, Some(e)) => {
                active.remove(&e);
            }
            _ => {
                for part in line.split('+').skip(1) {
                    let n: String = part.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(e) = n.parse::<u64>() {
                        active.insert(e);
                    }
                }
            }
        }
    }
    active
}

/// The metadata's sibling that says blocks may differ from the peer's:
/// the bitmap with a bit set, or the activity log holding an extent
/// (read only, nothing rewritten). None: neither marks anything (or
/// neither exists, or one cannot be read: then the start's own opening
/// reports it).
pub fn marking_sibling(meta: &Path) -> Option<PathBuf> {
    let bitmap = sibling(meta, "bitmap");
    if fs::read(&bitmap).is_ok_and(|b| bitmap_marks(&b)) {
        return Some(bitmap);
    }
    let al = sibling(meta, "al");
    fs::read(&al).is_ok_and(|b| al_marks(&String::from_utf8_lossy(&b))).then_some(al)
}

/// Whether the text of a journal marks blocks: it holds an extent, or it
/// cannot say which (a line that fails its checksum).
fn al_marks(text: &str) -> bool {
    match checked_body(text) {
        Some((body, key)) => replay_checked(body, key).map_or(true, |held| !held.is_empty()),
        None => !replay(text).is_empty(),
    }
}

/// A journal of the checked format: the text after its header line, and
/// that line's CRC32. None: no header, or one that cannot be read, or of
/// the format before checksums.
fn checked_body(text: &str) -> Option<(&str, u32)> {
    let end = text.strip_prefix(AL_MAGIC)?.find('\n')? + AL_MAGIC.len() + 1;
    let h: AlHeader = serde_json::from_str(&text[AL_MAGIC.len()..end - 1]).ok()?;
    (h.version >= AL_CHECKED).then(|| (&text[end..], crc32fast::hash(&text.as_bytes()[..end])))
}

/// The checked format (of this binary's) whose header, with `read` as its
/// format field's value replaced by it, makes the journal's first line
/// check out: the field rotted. None: no such format, or no line to tell.
fn rotten_version(text: &str, read: u32) -> Option<u32> {
    let end = text.find('\n')? + 1;
    let first = text[end..].split('\n').next().filter(|_| text[end..].contains('\n'))?;
    let field = format!("\"version\":{read}");
    (AL_CHECKED..=AL_VERSION).find(|v| {
        let header = text[..end].replacen(&field, &format!("\"version\":{v}"), 1);
        checked_line(first, crc32fast::hash(header.as_bytes()), 0).is_some()
    })
}

/// The journal's first line starts with this, then [`AlHeader`] as JSON
/// (from bitmap format 1 on; before, the journal had no header).
const AL_MAGIC: &str = "#twinblock-al ";

/// The journal format this binary writes: 1 had a header and lines
/// without checksums, 2 checks every line.
const AL_VERSION: u32 = 2;
/// The first format whose lines carry checksums.
const AL_CHECKED: u32 = 2;

/// Whose journal it is: the node, the resource, and the id of the bitmap
/// it goes with ([`BitmapFile::id`], recorded in `meta`); and a random
/// salt, new at every rewrite, so that the lines of one rewrite never
/// pass for another's.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct AlHeader {
    version: u32,
    resource: String,
    node: String,
    id: u64,
    #[serde(default)]
    salt: u64,
}

/// What a start finds in `<meta>.al`.
#[derive(Debug, PartialEq, Eq)]
pub enum AlSaved {
    /// No file.
    Missing,
    /// The extents this node's journal holds (or a journal from before
    /// headers, when the record names no bitmap id: read as before).
    Held(BTreeSet<u64>),
    /// A journal that cannot say which extents may hold writes in flight
    /// (why): every block must count as out of sync.
    Unfit(String),
}

/// What the text of `<meta>.al` says for `node` of `resource`, whose
/// metadata names the bitmap id `meta_id` (0: none).
fn parse_al(text: &str, node: &str, resource: &str, meta_id: u64) -> Result<AlSaved, BitmapError> {
    let Some(rest) = text.strip_prefix(AL_MAGIC) else {
        if meta_id != 0 {
            return Ok(AlSaved::Unfit(format!(
                "it has no header, but the metadata was saved with bitmap id {meta_id:#x}: an \
                 older file (restored or copied?), or cut short"
            )));
        }
        return Ok(AlSaved::Held(replay(text)));
    };
    let line = rest.split_once('\n').map(|(l, _)| l);
    let Some(h) = line.and_then(|l| serde_json::from_str::<AlHeader>(l).ok()) else {
        return Ok(AlSaved::Unfit("its header cannot be read (corrupt)".into()));
    };
    if h.version > AL_VERSION {
        // A rotten format field, not a newer twinblock, when the header
        // with a format of this binary's makes the first line check out
        // (before, it was refused as newer, and the node did not start).
        if let Some(v) = rotten_version(text, h.version) {
            return Ok(AlSaved::Unfit(format!(
                "its header's format field is corrupt (it reads {}; its lines check out with \
                 format {v})",
                h.version
            )));
        }
        return Err(BitmapError::Refused(format!(
            "written by a newer twinblock (activity log format {}, this one reads up to \
             {AL_VERSION}), or its header is corrupt: run that version, or upgrade this one; \
             if no newer twinblock ran on this node, remove the file (every block then counts \
             as out of sync, and a full resync follows)",
            h.version
        )));
    }
    if h.node != node || h.resource != resource {
        return Err(BitmapError::Refused(format!(
            "belongs to node {:?} of resource {:?}, not node {node:?} of resource {resource:?} \
             (copied from another node or resource?): put back this node's own file, or remove \
             it (every block then counts as out of sync, and a full resync follows)",
            h.node, h.resource
        )));
    }
    if meta_id != 0 && h.id != meta_id {
        return Ok(AlSaved::Unfit(format!(
            "not the activity log the metadata was saved with (bitmap id {:#x}, the metadata \
             names {meta_id:#x}): an older or newer file, or metadata restored from a copy",
            h.id
        )));
    }
    match checked_body(text) {
        Some((body, key)) => {
            Ok(replay_checked(body, key).map_or_else(AlSaved::Unfit, AlSaved::Held))
        }
        // Format 1 (lines without checksums): read as before.
        None => Ok(AlSaved::Held(replay(text))),
    }
}

impl AlJournal {
    /// What `<meta>.al` holds for `node` of `resource`, whose metadata
    /// names the bitmap id `meta_id` (0: none). A journal that exists but
    /// cannot be read is an error: it must not read as an empty log.
    pub fn load(
        meta: &Path,
        node: &str,
        resource: &str,
        meta_id: u64,
    ) -> Result<AlSaved, BitmapError> {
        match fs::read(sibling(meta, "al")) {
            Ok(bytes) => parse_al(&String::from_utf8_lossy(&bytes), node, resource, meta_id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AlSaved::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the journal next to `meta` holding `active` (what
    /// [`AlJournal::load`] found, or none): the file is rewritten with a
    /// header naming `node`, `resource` and the bitmap id `id`, and the
    /// extents alone (a torn last line left by a crash goes).
    pub fn open(
        meta: &Path,
        node: &str,
        resource: &str,
        id: u64,
        active: BTreeSet<u64>,
    ) -> std::io::Result<AlJournal> {
        let path = sibling(meta, "al");
        let mut header = AlHeader {
            version: AL_VERSION,
            resource: resource.into(),
            node: node.into(),
            id,
            salt: 0,
        };
        let (file, key) = rewrite(&path, &mut header, &active)?;
        let lines = active.len();
        Ok(AlJournal { path, header, key, file, active, lines, torn: false })
    }

    /// Rewrites the file with the extents held, atomically.
    fn compact(&mut self) -> std::io::Result<()> {
        (self.file, self.key) = rewrite(&self.path, &mut self.header, &self.active)?;
        self.lines = self.active.len();
        self.torn = false;
        Ok(())
    }

    /// Records extents leaving, then joining; durable on return.
    ///
    /// If it fails, the change may be in the file or not, whole or torn
    /// (the core then counts the extents it removed as gone, those it
    /// added as absent), and the file is rewritten before the next one.
    pub fn apply(&mut self, remove: &[u64], add: &[u64]) -> std::io::Result<()> {
        if self.torn {
            self.compact()?;
        }
        let mut text = String::new();
        let changes = remove.iter().map(|e| ('-', e)).chain(add.iter().map(|e| ('+', e)));
        for (seq, (sign, e)) in (self.lines as u64..).zip(changes) {
            push_line(&mut text, self.key, seq, sign, *e);
        }
        self.torn = true;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.torn = false;
        for e in remove {
            self.active.remove(e);
        }
        self.active.extend(add.iter().copied());
        self.lines += remove.len() + add.len();
        if self.lines > COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }
}

/// What `<meta>.bitmap` belongs to: checked against its header at every
/// start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BitmapIdent {
    pub resource: String,
    pub node: String,
    /// The device's size in bytes.
    pub size: u64,
    /// Bytes per bit.
    pub block: u64,
    /// 64-bit words of the bitmap.
    pub words: u64,
}

/// The header's JSON: the identity and the file's id (random, made with
/// the file, recorded in `meta` as `bitmap_id`).
#[derive(serde::Serialize, serde::Deserialize)]
struct HeaderJson {
    #[serde(flatten)]
    ident: BitmapIdent,
    id: u64,
}

/// The first bytes of a bitmap file with a header (format 1 on): before
/// it, the file held the words alone.
const MAGIC: &[u8; 8] = b"TWBITMAP";
/// The bitmap format this binary writes.
pub const BITMAP_VERSION: u32 = 1;
/// The header's room: the pages start after it.
const HEADER: u64 = 4096;
/// Each page is followed by its checksum (a CRC32 of the file's id, the
/// page's number and its words; 8 bytes, the last 4 zero).
const TRAILER: u64 = 8;

/// What a start finds in `<meta>.bitmap`.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    /// No file.
    Missing,
    /// A file of the format before headers (the words alone) of the right
    /// length: its words, which nothing can check.
    Legacy(Vec<u64>),
    /// This node's bitmap. A page whose checksum fails (a torn write in a
    /// crash, bit rot) is all ones here (its blocks out of sync), its
    /// number in `bad_pages`.
    Checked { words: Vec<u64>, id: u64, bad_pages: Vec<u64> },
    /// A file that cannot say which blocks are in sync (why): every block
    /// must count as out of sync.
    Unfit(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A file that is not this node's, or of a newer format: the start
    /// is refused (why, and what to do).
    #[error("{0}")]
    Refused(String),
}

/// A new file's id: random, never 0.
fn fresh_id() -> u64 {
    crate::random::random_u64().max(1)
}

/// Page `page`'s offset in the file and its number of words.
fn page_at(words: u64, page: u64) -> (u64, usize) {
    let per = PAGE_WORDS as u64;
    let n = (words - page * per).min(per);
    (HEADER + page * (per * 8 + TRAILER), n as usize)
}

fn page_crc(id: u64, page: u64, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&page.to_le_bytes());
    h.update(bytes);
    h.finalize()
}

/// A page's words and trailer, as written.
fn page_bytes(id: u64, page: u64, words: &[u64]) -> Vec<u8> {
    let mut b: Vec<u8> = Vec::with_capacity(words.len() * 8 + TRAILER as usize);
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = page_crc(id, page, &b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b
}

/// The whole file for `words`.
fn encode(ident: &BitmapIdent, id: u64, words: &[u64]) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(&HeaderJson { ident: ident.clone(), id })
        .map_err(std::io::Error::other)?;
    if 16 + json.len() + 4 > HEADER as usize {
        return Err(std::io::Error::other("the bitmap header's names are too long"));
    }
    let mut b = Vec::with_capacity(HEADER as usize + words.len() * 8 + words.len() / 64 + 8);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&BITMAP_VERSION.to_le_bytes());
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(&json);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(HEADER as usize, 0);
    for (page, chunk) in words.chunks(PAGE_WORDS).enumerate() {
        b.extend_from_slice(&page_bytes(id, page as u64, chunk));
    }
    Ok(b)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn words_of(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

/// The header's identity and id; Err: the header is cut short or fails
/// its checksum (why), or is of a newer format (Refused).
fn header(bytes: &[u8]) -> Result<Result<HeaderJson, String>, BitmapError> {
    if bytes.len() < 16 {
        return Ok(Err("its header is cut short".into()));
    }
    let version = le_u32(&bytes[8..12]);
    let len = le_u32(&bytes[12..16]) as usize;
    if 16 + len + 4 > (HEADER as usize).min(bytes.len()) {
        return Ok(Err("its header is cut short or corrupt".into()));
    }
    // (The checksum first: a rotten format field was refused as "written
    // by a newer twinblock", and the node did not start. Every format
    // keeps this layout, magic, version, length, JSON, CRC32, within the
    // first HEADER bytes, so that a newer file is told from a corrupt one;
    // one that does not is read as corrupt: a full resync, never a block
    // believed in sync.)
    if crc32fast::hash(&bytes[..16 + len]) != le_u32(&bytes[16 + len..]) {
        return Ok(Err("its header fails its checksum (corrupt)".into()));
    }
    if version > BITMAP_VERSION {
        return Err(BitmapError::Refused(format!(
            "written by a newer twinblock (bitmap format {version}, this one reads up to \
             {BITMAP_VERSION}): run that version, or upgrade this one"
        )));
    }
    Ok(serde_json::from_slice(&bytes[16..16 + len])
        .map_err(|e| format!("its header cannot be read ({e})")))
}

/// What the bytes of `<meta>.bitmap` say for the node of `ident` whose
/// metadata names the file `meta_id` (0: metadata from before the id).
fn parse(bytes: &[u8], ident: &BitmapIdent, meta_id: u64) -> Result<Saved, BitmapError> {
    let words = ident.words;
    if !bytes.starts_with(MAGIC) {
        if meta_id != 0 {
            return Ok(Saved::Unfit(format!(
                "it has no header, but the metadata was saved with bitmap id {meta_id:#x}: an \
                 older file (restored or copied?)"
            )));
        }
        if bytes.len() as u64 != words * 8 {
            return Ok(Saved::Unfit(format!(
                "{} bytes (format without a header), {} expected: cut short, or another device's",
                bytes.len(),
                words * 8
            )));
        }
        return Ok(Saved::Legacy(words_of(bytes)));
    }
    let h = match header(bytes)? {
        Ok(h) => h,
        Err(why) => return Ok(Saved::Unfit(why)),
    };
    let (found, want) = (&h.ident, ident);
    if found.resource != want.resource || found.node != want.node {
        return Err(BitmapError::Refused(format!(
            "belongs to node {:?} of resource {:?}, not node {:?} of resource {:?} (copied from \
             another node or resource?): put back this node's own file, or remove it (every \
             block then counts as out of sync, and a full resync follows)",
            found.node, found.resource, want.node, want.resource
        )));
    }
    if (found.size, found.block, found.words) != (want.size, want.block, want.words) {
        return Ok(Saved::Unfit(format!(
            "made for a device of {} bytes in blocks of {}, not {} in blocks of {}",
            found.size, found.block, want.size, want.block
        )));
    }
    if meta_id != 0 && h.id != meta_id {
        return Ok(Saved::Unfit(format!(
            "not the bitmap the metadata was saved with (bitmap id {:#x}, the metadata names \
             {meta_id:#x}): an older or newer file, or metadata restored from a copy",
            h.id
        )));
    }
    let pages = words.div_ceil(PAGE_WORDS as u64);
    let expected = HEADER + words * 8 + pages * TRAILER;
    if bytes.len() as u64 != expected {
        return Ok(Saved::Unfit(format!(
            "{} bytes, {expected} expected (cut short or extended)",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(words as usize);
    let mut bad_pages = Vec::new();
    for page in 0..pages {
        let (at, n) = page_at(words, page);
        let data = &bytes[at as usize..at as usize + n * 8];
        let trailer = &bytes[at as usize + n * 8..at as usize + n * 8 + TRAILER as usize];
        if page_crc(h.id, page, data) == le_u32(trailer) && trailer[4..] == [0; 4] {
            out.extend(words_of(data));
        } else {
            bad_pages.push(page);
            out.extend(std::iter::repeat_n(u64::MAX, n));
        }
    }
    Ok(Saved::Checked { words: out, id: h.id, bad_pages })
}

/// Whether the bytes of a bitmap file mark any block (a file whose header
/// cannot be read: any byte past it set).
fn bitmap_marks(bytes: &[u8]) -> bool {
    if !bytes.starts_with(MAGIC) {
        return bytes.iter().any(|&x| x != 0);
    }
    let Ok(Ok(h)) = header(bytes) else {
        return bytes.iter().skip(HEADER as usize).any(|&x| x != 0);
    };
    let words = h.ident.words;
    (0..words.div_ceil(PAGE_WORDS as u64)).any(|page| {
        let (at, n) = page_at(words, page);
        let end = (at as usize + n * 8).min(bytes.len());
        bytes.get(at as usize..end).is_none_or(|d| d.iter().any(|&x| x != 0))
    })
}

pub struct BitmapFile {
    file: File,
    id: u64,
    words: u64,
}

impl BitmapFile {
    /// What `<meta>.bitmap` holds for the node of `ident`, whose metadata
    /// names the file `meta_id` (0: none). A file that exists but cannot be
    /// read is an error: taken for none, every block its bits marked would
    /// be taken for in sync.
    pub fn load(meta: &Path, ident: &BitmapIdent, meta_id: u64) -> Result<Saved, BitmapError> {
        match fs::read(sibling(meta, "bitmap")) {
            Ok(bytes) => parse(&bytes, ident, meta_id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::Missing),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces `<meta>.bitmap` with `words`, atomically (the old file, or
    /// none, until the new one is whole on disk), under a new id; returns
    /// it open.
    pub fn create(meta: &Path, ident: &BitmapIdent, words: &[u64]) -> std::io::Result<BitmapFile> {
        let id = fresh_id();
        let path = sibling(meta, "bitmap");
        atomic_write(&path, &encode(ident, id, words)?)?;
        BitmapFile::open(meta, ident, id)
    }

    /// Opens `<meta>.bitmap`, checked as [`Saved::Checked`] with `id`.
    pub fn open(meta: &Path, ident: &BitmapIdent, id: u64) -> std::io::Result<BitmapFile> {
        let file = OpenOptions::new().read(true).write(true).open(sibling(meta, "bitmap"))?;
        Ok(BitmapFile { file, id, words: ident.words })
    }

    /// The file's id (recorded in `meta` as `bitmap_id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Overwrites pages (PAGE_WORDS words each, the last may be shorter),
    /// each with its checksum in the same write; durable on return.
    pub fn write_pages(&self, pages: &[(u64, Vec<u64>)]) -> std::io::Result<()> {
        for (page, words) in pages {
            let fits = *page < self.words.div_ceil(PAGE_WORDS as u64)
                && words.len() == page_at(self.words, *page).1;
            if !fits {
                return Err(std::io::Error::other(format!(
                    "bitmap page {page} of {} words does not fit a bitmap of {} words",
                    words.len(),
                    self.words
                )));
            }
            let (at, _) = page_at(self.words, *page);
            self.file.write_all_at(&page_bytes(self.id, *page, words), at)?;
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node a's journal of resource r0, as a start opens it.
    fn open_al(meta: &Path) -> (AlJournal, Vec<u64>) {
        let held = match AlJournal::load(meta, "a", "r0", 0).unwrap() {
            AlSaved::Held(held) => held,
            AlSaved::Missing => BTreeSet::new(),
            AlSaved::Unfit(why) => panic!("unfit: {why}"),
        };
        let j = AlJournal::open(meta, "a", "r0", 7, held.clone()).unwrap();
        (j, held.into_iter().collect())
    }

    #[test]
    fn the_journal_replays_joins_and_leaves_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        assert_eq!(AlJournal::load(&meta, "a", "r0", 0).unwrap(), AlSaved::Missing);
        let (mut j, held) = open_al(&meta);
        assert!(held.is_empty());
        j.apply(&[], &[1, 2, 3, 12]).unwrap();
        j.apply(&[2], &[9]).unwrap();
        drop(j);
        // A crash tore the append of "-12\n" after its first two bytes:
        // extent 1 stays, and so does 12 (its leaving was not recorded).
        let mut f = OpenOptions::new().append(true).open(&al).unwrap();
        f.write_all(b"-1").unwrap();
        drop(f);
        let (mut j, held) = open_al(&meta);
        assert_eq!(held, vec![1, 3, 9, 12]);
        // The torn line is gone from the file: what is appended next is
        // not glued to it ("-1+5" would hide extent 5's joining).
        j.apply(&[], &[5]).unwrap();
        drop(j);
        let (_, held) = open_al(&meta);
        assert_eq!(held, vec![1, 3, 5, 9, 12]);
        let text = fs::read_to_string(&al).unwrap();
        assert!(text.starts_with(AL_MAGIC), "{text:?}");
        assert!(
            text.lines().skip(1).all(|l| l.starts_with('+')),
            "not compacted at open: {text:?}"
        );
        let mode = fs::metadata(&al).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn only_whole_lines_of_a_sign_and_digits_count_and_a_bad_one_removes_nothing() {
        assert_eq!(replay("+1\n+2\n-1\n+3"), BTreeSet::from([2]));
        // A malformed whole line removes nothing and keeps each +N in it.
        assert_eq!(replay("+1\n-+1\n+ 4\n+-5\n+6x\n\n-\n+\n+7\n"), BTreeSet::from([1, 6, 7]));
        assert_eq!(replay("+1\n-1+5\n"), BTreeSet::from([1, 5]));
        assert_eq!(replay("+4+5\n"), BTreeSet::from([4, 5]));
        assert_eq!(replay("+1\n-\u{fffd}1\n\u{e9}+2\n"), BTreeSet::from([1, 2]));
        assert_eq!(replay(""), BTreeSet::new());
    }

    /// A journal that cannot be read is not an empty one.
    #[test]
    fn a_corrupt_journal_keeps_its_extents_and_an_unreadable_one_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        fs::write(&al, b"+1\n+2\n\xff\n-1\xff\n").unwrap();
        let (_, held) = open_al(&meta);
        assert_eq!(held, vec![1, 2]);
        fs::remove_file(&al).unwrap();
        fs::create_dir(&al).unwrap(); // reading it fails (EISDIR), not NotFound
        assert!(matches!(AlJournal::load(&meta, "a", "r0", 0), Err(BitmapError::Io(_))));
    }

    /// A journal of another node or resource refuses the start; one that
    /// is not the record's (another id, no header though the record names
    /// one, a corrupt header) is unfit (every block out of sync); one
    /// from before headers is read as before when the record names none.
    #[test]
    fn a_journal_that_is_not_this_nodes_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        let mut j = AlJournal::open(&meta, "a", "r0", 9, BTreeSet::from([3])).unwrap();
        j.apply(&[3], &[4]).unwrap();
        let held = AlJournal::load(&meta, "a", "r0", 9).unwrap();
        assert_eq!(held, AlSaved::Held(BTreeSet::from([4])));
        let refused = |node, res| match AlJournal::load(&meta, node, res, 9) {
            Err(BitmapError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let why = refused("b", "r0");
        assert!(why.contains("node \"a\"") && why.contains("node \"b\""), "{why}");
        let why = refused("a", "r1");
        assert!(why.contains("remove it"), "{why}");
        let unfit = |id| match AlJournal::load(&meta, "a", "r0", id).unwrap() {
            AlSaved::Unfit(why) => why,
            other => panic!("trusted: {other:?}"),
        };
        assert!(unfit(8).contains("not the activity log the metadata was saved with"));
        // Any id for a record from before ids.
        assert_eq!(AlJournal::load(&meta, "a", "r0", 0).unwrap(), AlSaved::Held([4].into()));
        let text = fs::read_to_string(&al).unwrap();
        fs::write(&al, text.replacen("\"id\":9", "\"id\":9x", 1)).unwrap();
        assert!(unfit(9).contains("corrupt"));
        fs::write(&al, "+1\n-1\n+2\n").unwrap();
        assert!(unfit(9).contains("no header"));
        assert_eq!(AlJournal::load(&meta, "a", "r0", 0).unwrap(), AlSaved::Held([2].into()));
        fs::write(&al, "").unwrap();
        assert!(unfit(9).contains("no header"), "an emptied journal");
        // A newer format's journal (whose lines are not this format's) is
        // refused; this journal with its format field rotten (its lines
        // check out with format 2) is unfit, not refused as newer.
        let header = text.split_inclusive('\n').next().unwrap();
        let newer = header.replacen("\"version\":2", "\"version\":3", 1) + "+5\n";
        fs::write(&al, newer).unwrap();
        match AlJournal::load(&meta, "a", "r0", 9) {
            Err(BitmapError::Refused(why)) => assert!(why.contains("newer"), "{why}"),
            other => panic!("not refused: {other:?}"),
        }
        assert!(text.lines().count() > 1, "{text}");
        fs::write(&al, text.replacen("\"version\":2", "\"version\":6", 1)).unwrap();
        let why = unfit(9);
        assert!(why.contains("format field is corrupt") && why.contains("reads 6"), "{why}");
    }

    /// Node a's journal of resource r0 as a start with a record naming
    /// bitmap id 9 finds it.
    fn load9(meta: &Path) -> AlSaved {
        AlJournal::load(meta, "a", "r0", 9).unwrap()
    }

    fn unfit_al(saved: AlSaved) -> String {
        match saved {
            AlSaved::Unfit(why) => why,
            other => panic!("trusted: {other:?}"),
        }
    }

    /// A journal holding 12 and 13 that then saw 12 leave, as bytes.
    fn journal_12_13_less_12(meta: &Path) -> Vec<u8> {
        let mut j = AlJournal::open(meta, "a", "r0", 9, BTreeSet::new()).unwrap();
        j.apply(&[], &[12, 13]).unwrap();
        j.apply(&[12], &[]).unwrap();
        assert_eq!(load9(meta), AlSaved::Held([13].into()));
        fs::read(sibling(meta, "al")).unwrap()
    }

    /// Replaces the first `from` after the header line with `to`.
    fn rot(good: &[u8], from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(good.to_vec()).unwrap();
        let head = text.find('\n').unwrap() + 1;
        let at = head + text[head..].find(from).unwrap_or_else(|| panic!("{from:?} in {text:?}"));
        let mut out = text[..at].to_owned();
        out.push_str(to);
        out.push_str(&text[at + from.len()..]);
        out.into_bytes()
    }

    /// A byte changed inside a line (bit rot, a stray write) never removes
    /// an extent: `-12` read as `-13` dropped extent 13, whose writes were
    /// then not resynced after a crash. A line that fails its checksum
    /// makes the log unfit (every block out of sync): its extent and sign
    /// are what may have changed.
    #[test]
    fn a_line_changed_on_disk_makes_the_journal_unfit() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = sibling(&meta, "al");
        let good = journal_12_13_less_12(&meta);
        for (from, to) in [
            ("\n-12 ", "\n-13 "), // a leaving: 13 would leave
            ("+13 ", "+14 "),     // a joining: 13 would never have joined
            ("+13 ", "-13 "),     // the sign
            ("+12 ", "+1  "),
            ("\n-12 ", "\n-12\n"), // a newline inside
        ] {
            fs::write(&al, rot(&good, from, to)).unwrap();
            let why = unfit_al(load9(&meta));
            assert!(why.contains("fails its checksum"), "{from:?}: {why}");
            assert!(marking_sibling(&meta).is_some(), "{from:?}: taken for a log marking nothing");
        }
        // A byte of a checksum.
        let text = String::from_utf8(good.clone()).unwrap();
        let at = text.rfind(' ').unwrap() + 3;
        let mut bad = good.clone();
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        fs::write(&al, &bad).unwrap();
        assert!(unfit_al(load9(&meta)).contains("line 4"));
        // A line inserted, an empty line.
        fs::write(&al, rot(&good, "+13", "+13 00000000\n+13")).unwrap();
        unfit_al(load9(&meta));
        fs::write(&al, rot(&good, "+13", "\n+13")).unwrap();
        assert!(unfit_al(load9(&meta)).contains("line 3"));
        fs::write(&al, &good).unwrap();
        assert_eq!(load9(&meta), AlSaved::Held([13].into()));
    }

    /// A whole line in the wrong place (duplicated, replayed later, two
    /// lines swapped, or copied from another rewrite of the log) fails its
    /// checksum too: each covers the line's number and the header's salt.
    #[test]
    fn a_line_replayed_or_copied_from_elsewhere_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = sibling(&meta, "al");
        let good = journal_12_13_less_12(&meta);
        let text = String::from_utf8(good.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        // "+12" replayed after its "-12".
        fs::write(&al, format!("{text}{}\n", lines[1])).unwrap();
        assert!(unfit_al(load9(&meta)).contains("line 5"));
        // Swapped.
        let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n") + "\n";
        fs::write(&al, swapped).unwrap();
        unfit_al(load9(&meta));
        // A line dropped (a later line then stands at another number).
        fs::write(&al, [lines[0], lines[1], lines[3]].join("\n") + "\n").unwrap();
        unfit_al(load9(&meta));
        // Another rewrite of the same log (same node, resource, id), whose
        // line 2 is "+12": it does not pass in this one.
        AlJournal::open(&meta, "a", "r0", 9, BTreeSet::from([12])).unwrap();
        let other = fs::read_to_string(&al).unwrap();
        let copied = other.lines().nth(1).unwrap();
        assert!(copied.starts_with("+12 "), "{other:?}");
        fs::write(&al, [lines[0], copied].join("\n") + "\n").unwrap();
        unfit_al(load9(&meta));
    }

    /// A torn append (the beginning of its lines, the newline last) is
    /// still ignored: the extent's write was not issued. What cannot be
    /// the beginning of a line is a corrupt byte (the last newline
    /// changed): unfit.
    #[test]
    fn a_torn_last_line_is_ignored_and_a_corrupt_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = sibling(&meta, "al");
        let good = journal_12_13_less_12(&meta);
        // What appending "-13" and "+14" would write.
        let mut j = AlJournal::open(&meta, "a", "r0", 9, BTreeSet::from([13])).unwrap();
        j.apply(&[13], &[14]).unwrap();
        drop(j);
        let full = fs::read(&al).unwrap();
        let before = full.len() - 2 * "+14 00000000\n".len();
        for cut in before..full.len() {
            fs::write(&al, &full[..cut]).unwrap();
            let held = load9(&meta);
            // 13 leaves once its whole line is there; 14's joining, torn,
            // is ignored.
            let left = cut >= before + "-13 00000000\n".len();
            let want: BTreeSet<u64> = if left { BTreeSet::new() } else { [13].into() };
            assert_eq!(held, AlSaved::Held(want), "cut at {cut}: {:?}", &full[before..cut]);
        }
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = b'x';
        fs::write(&al, &bad).unwrap();
        assert!(unfit_al(load9(&meta)).contains("no newline"));
        fs::write(&al, [&good[..], b"+1x"].concat()).unwrap();
        unfit_al(load9(&meta));
        fs::write(&al, [&good[..], b"+1 abcd12345"].concat()).unwrap();
        unfit_al(load9(&meta));
        // A tail of zeroes (an extended file whose data had not landed,
        // XFS after a crash mid-append): torn, ignored, alone or after the
        // beginning of a line; after a corrupt byte, unfit.
        fs::write(&al, [&good[..], &[0; 13][..]].concat()).unwrap();
        assert_eq!(load9(&meta), AlSaved::Held([13].into()));
        fs::write(&al, [&good[..], b"+1", &[0; 11][..]].concat()).unwrap();
        assert_eq!(load9(&meta), AlSaved::Held([13].into()));
        fs::write(&al, [&good[..], b"+1x", &[0; 10][..]].concat()).unwrap();
        unfit_al(load9(&meta));
        fs::write(&al, [&good[..], b"+1 abc"].concat()).unwrap();
        assert_eq!(load9(&meta), AlSaved::Held([13].into()));
    }

    /// A log of format 1 (a header, lines without checksums) or of the
    /// format before headers is read as before, and rewritten checked at
    /// the open.
    #[test]
    fn a_journal_without_checksums_is_read_as_before_and_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = sibling(&meta, "al");
        let v1 = "#twinblock-al {\"version\":1,\"resource\":\"r0\",\"node\":\"a\",\"id\":9}\n";
        fs::write(&al, format!("{v1}+12\n+13\n-13\n+5\n-1")).unwrap();
        assert_eq!(load9(&meta), AlSaved::Held([5, 12].into()));
        assert!(marking_sibling(&meta).is_some());
        AlJournal::open(&meta, "a", "r0", 9, BTreeSet::from([5, 12])).unwrap();
        let text = fs::read_to_string(&al).unwrap();
        assert!(text.contains("\"version\":2"), "{text}");
        assert!(text.lines().skip(1).all(|l| l.len() == l.find(' ').unwrap() + 9), "{text}");
        assert_eq!(load9(&meta), AlSaved::Held([5, 12].into()));
        // Before headers, with a record from before ids.
        fs::write(&al, "+3\n+4\n-3\n").unwrap();
        let (_, held) = open_al(&meta);
        assert_eq!(held, vec![4]);
        assert!(fs::read_to_string(&al).unwrap().contains("\"version\":2"));
        assert_eq!(AlJournal::load(&meta, "a", "r0", 7).unwrap(), AlSaved::Held([4].into()));
        // A checked log holding nothing marks nothing.
        AlJournal::open(&meta, "a", "r0", 9, BTreeSet::new()).unwrap();
        assert!(marking_sibling(&meta).is_none());
    }

    /// An append that failed may have left a torn line: the file is
    /// rewritten before the next change.
    #[test]
    fn a_change_after_a_failed_append_starts_on_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        let (mut j, _) = open_al(&meta);
        j.apply(&[], &[1, 2]).unwrap();
        // As a failed write_all would leave it: a torn "-2", and the
        // journal knowing the append failed.
        OpenOptions::new().append(true).open(&al).unwrap().write_all(b"-").unwrap();
        j.torn = true;
        j.apply(&[], &[5]).unwrap();
        drop(j);
        let (_, held) = open_al(&meta);
        assert_eq!(held, vec![1, 2, 5], "extent 5's joining was glued to the torn line");
    }

    fn ident(words: usize) -> BitmapIdent {
        BitmapIdent {
            resource: "r0".into(),
            node: "a".into(),
            size: words as u64 * 64 * 4096,
            block: 4096,
            words: words as u64,
        }
    }

    fn checked(saved: Saved) -> (Vec<u64>, u64, Vec<u64>) {
        match saved {
            Saved::Checked { words, id, bad_pages } => (words, id, bad_pages),
            other => panic!("not checked: {other:?}"),
        }
    }

    fn unfit(saved: Saved) -> String {
        match saved {
            Saved::Unfit(why) => why,
            other => panic!("trusted: {other:?}"),
        }
    }

    #[test]
    fn a_bitmap_is_read_back_whole_and_its_pages_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let words = PAGE_WORDS * 2 + 3;
        let id = ident(words);
        assert_eq!(BitmapFile::load(&meta, &id, 0).unwrap(), Saved::Missing);
        let f = BitmapFile::create(&meta, &id, &vec![u64::MAX; words]).unwrap();
        let (saved, fid, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert_eq!((saved, fid, bad), (vec![u64::MAX; words], f.id(), vec![]));
        f.write_pages(&[(1, vec![7; PAGE_WORDS]), (2, vec![9; 3])]).unwrap();
        assert!(f.write_pages(&[(3, vec![0; 3])]).is_err(), "a page past the end");
        assert!(f.write_pages(&[(2, vec![0; 4])]).is_err(), "a last page too long");
        let (saved, _, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert!(bad.is_empty());
        assert_eq!(saved[..PAGE_WORDS], vec![u64::MAX; PAGE_WORDS][..]);
        assert_eq!(saved[PAGE_WORDS..PAGE_WORDS * 2], vec![7; PAGE_WORDS][..]);
        assert_eq!(saved[PAGE_WORDS * 2..], [9, 9, 9]);
        let mode = fs::metadata(dir.path().join("n.meta.bitmap")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    /// A page changed on disk (bit rot, a stray write) or torn by a crash
    /// never clears a bit: the page counts as all ones, the others stay.
    #[test]
    fn a_page_that_fails_its_checksum_counts_as_all_out_of_sync() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let path = dir.path().join("n.meta.bitmap");
        let words = PAGE_WORDS * 3;
        let id = ident(words);
        let mut w = vec![0u64; words];
        w[PAGE_WORDS + 5] = 0xff;
        w[5] = 1;
        let f = BitmapFile::create(&meta, &id, &w).unwrap();
        // A bit of page 1 cleared behind the file's back.
        let at = page_at(words as u64, 1).0 + 5 * 8;
        f.file.write_all_at(&[0x7f], at).unwrap();
        let (saved, _, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert_eq!(bad, vec![1]);
        assert_eq!(saved[PAGE_WORDS..PAGE_WORDS * 2], vec![u64::MAX; PAGE_WORDS][..]);
        assert_eq!(saved[5], 1, "page 0 is intact");
        assert_eq!(saved[PAGE_WORDS * 2..], vec![0; PAGE_WORDS][..], "page 2 is intact");
        // A torn write: the first half of a page's new words landed, not
        // its checksum.
        let f = BitmapFile::create(&meta, &id, &w).unwrap();
        let half = page_bytes(f.id(), 2, &[0; PAGE_WORDS]);
        f.file.write_all_at(&half[..2048], page_at(words as u64, 2).0).unwrap();
        let (saved, _, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert_eq!(bad, Vec::<u64>::new(), "the same words: nothing torn");
        assert_eq!(saved, w);
        let half = page_bytes(f.id(), 0, &[0; PAGE_WORDS]);
        f.file.write_all_at(&half[..2048], page_at(words as u64, 0).0).unwrap();
        let (saved, _, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert_eq!(bad, vec![0]);
        assert_eq!(saved[..PAGE_WORDS], vec![u64::MAX; PAGE_WORDS][..]);
        // Bytes of the checksum itself.
        let f = BitmapFile::create(&meta, &id, &w).unwrap();
        let (at, n) = page_at(words as u64, 2);
        f.file.write_all_at(&[1], at + n as u64 * 8 + 6).unwrap();
        let (_, _, bad) = checked(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert_eq!(bad, vec![2]);
        drop(path);
    }

    /// A bitmap that belongs to another node or resource is refused, one
    /// of a newer format too; one that cannot say which blocks are in sync
    /// for this device (another size, cut short, a corrupt header, not the
    /// file the record was saved with) is unfit: every block out of sync.
    #[test]
    fn a_bitmap_that_is_not_this_nodes_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let path = dir.path().join("n.meta.bitmap");
        let words = PAGE_WORDS + 10;
        let id = ident(words);
        let f = BitmapFile::create(&meta, &id, &vec![0; words]).unwrap();
        let good = fs::read(&path).unwrap();
        let refused = |id: &BitmapIdent| match BitmapFile::load(&meta, id, f.id()) {
            Err(BitmapError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let why = refused(&BitmapIdent { resource: "r1".into(), ..id.clone() });
        assert!(
            why.contains("\"r0\"") && why.contains("\"r1\"") && why.contains("remove"),
            "{why}"
        );
        let why = refused(&BitmapIdent { node: "b".into(), ..id.clone() });
        assert!(why.contains("node \"a\"") && why.contains("node \"b\""), "{why}");
        let other_size = ident(words + 1);
        let why = unfit(BitmapFile::load(&meta, &other_size, f.id()).unwrap());
        assert!(why.contains("made for a device"), "{why}");
        let why = unfit(BitmapFile::load(&meta, &id, f.id() ^ 1).unwrap());
        assert!(why.contains("not the bitmap the metadata was saved with"), "{why}");
        fs::write(&path, &good[..good.len() - 100]).unwrap();
        let why = unfit(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert!(why.contains("cut short"), "{why}");
        let mut bad = good.clone();
        bad[20] ^= 1;
        fs::write(&path, &bad).unwrap();
        let why = unfit(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert!(why.contains("checksum"), "{why}");
        // A newer format (its header's checksum holds) is refused; a
        // rotten format field (the checksum fails) is a corrupt header,
        // unfit (before, refused as newer: the node did not start).
        let mut newer = good.clone();
        newer[8] = 2;
        fs::write(&path, &newer).unwrap();
        let why = unfit(BitmapFile::load(&meta, &id, f.id()).unwrap());
        assert!(why.contains("checksum"), "{why}");
        let len = le_u32(&newer[12..16]) as usize;
        let crc = crc32fast::hash(&newer[..16 + len]);
        newer[16 + len..20 + len].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &newer).unwrap();
        let why = refused(&id);
        assert!(why.contains("newer") && why.contains("format 2"), "{why}");
        fs::write(&path, &good[..10]).unwrap();
        unfit(BitmapFile::load(&meta, &id, f.id()).unwrap());
    }

    /// A file of the format before headers (the words alone) is read as
    /// before, if it has the right length and the record names no bitmap.
    #[test]
    fn a_bitmap_without_a_header_is_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let path = dir.path().join("n.meta.bitmap");
        let words = PAGE_WORDS + 1;
        let id = ident(words);
        let old: Vec<u8> = (0..words as u64).flat_map(|w| w.to_le_bytes()).collect();
        fs::write(&path, &old).unwrap();
        assert_eq!(
            BitmapFile::load(&meta, &id, 0).unwrap(),
            Saved::Legacy((0..words as u64).collect())
        );
        assert!(bitmap_marks(&old));
        // Saved by this version, the record names a bitmap with a header.
        let why = unfit(BitmapFile::load(&meta, &id, 5).unwrap());
        assert!(why.contains("no header"), "{why}");
        fs::write(&path, &old[..old.len() - 8]).unwrap();
        let why = unfit(BitmapFile::load(&meta, &id, 0).unwrap());
        assert!(why.contains("cut short"), "{why}");
    }

    /// A bitmap file that exists but cannot be read (EISDIR here, EIO on a
    /// failing disk) fails the open: taken for none, it was zeroed, and
    /// every block its bits marked was then taken for in sync (found in
    /// review).
    #[test]
    fn an_unreadable_bitmap_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        fs::create_dir(dir.path().join("n.meta.bitmap")).unwrap();
        assert!(matches!(BitmapFile::load(&meta, &ident(4), 0), Err(BitmapError::Io(_))));
    }

    /// Only the words mark blocks: a header does not.
    #[test]
    fn a_bitmap_of_zeroes_with_a_header_marks_nothing() {
        let words = PAGE_WORDS * 2;
        let mut w = vec![0u64; words];
        let bytes = encode(&ident(words), 3, &w).unwrap();
        assert!(!bitmap_marks(&bytes));
        w[PAGE_WORDS + 1] = 4;
        assert!(bitmap_marks(&encode(&ident(words), 3, &w).unwrap()));
        let mut bad = encode(&ident(words), 3, &vec![0; words]).unwrap();
        bad[20] ^= 1;
        // Its layout unknown, the checksums count as bits: a file that
        // cannot be read is not taken for one that marks nothing.
        assert!(bitmap_marks(&bad), "a corrupt header");
    }
}
