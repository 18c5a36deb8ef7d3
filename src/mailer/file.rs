//! The file transport: each message an `.eml` file in the outbox folder,
//! named by its Message-ID, so a retry of the same message replaces its file
//! rather than adding a second one. Written to a temporary file, synced and
//! renamed, so a crash or a full disk never leaves a truncated message.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

/// The file name for a message: its Message-ID with anything but letters,
/// digits, `.`, `-`, `_` and `@` replaced, or a random one without an ID.
pub fn file_name(raw: &[u8]) -> String {
    let id = message_id(raw).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let safe: String = id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '@' => c,
            _ => '_',
        })
        .collect();
    format!("{safe}.eml")
}

/// The Message-ID in a message's header, without its angle brackets.
fn message_id(raw: &[u8]) -> Option<String> {
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("Message-ID")
            .then(|| value.trim().trim_matches(['<', '>']).to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Writes `raw` into `dir` atomically; returns the file's name.
pub fn write(dir: &Path, raw: &[u8]) -> std::io::Result<String> {
    let name = file_name(raw);
    let tmp: PathBuf = dir.join(format!(".{name}.{:08x}.tmp", fastrand::u32(..)));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(raw)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        // The rename itself survives a power loss once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_by_message_id_and_replaced_on_retry() {
        let dir = tempfile::tempdir().unwrap();
        let raw = b"From: a@x.org\r\nMessage-ID: <digest.2024-03-11.u1@x.org>\r\n\r\nbody one\r\n";
        let name = write(dir.path(), raw).unwrap();
        assert_eq!(name, "digest.2024-03-11.u1@x.org.eml");
        let again =
            b"From: a@x.org\r\nMessage-ID: <digest.2024-03-11.u1@x.org>\r\n\r\nbody two\r\n";
        write(dir.path(), again).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "replaced, no temporary file left");
        assert!(
            std::fs::read_to_string(files[0].path())
                .unwrap()
                .contains("body two")
        );
    }

    #[test]
    fn odd_ids_make_safe_names() {
        assert_eq!(
            file_name(b"Message-ID: <a/../b c@x>\r\n\r\n"),
            "a_.._b_c@x.eml"
        );
        assert!(file_name(b"Subject: none\r\n\r\n").ends_with(".eml"));
    }
}
