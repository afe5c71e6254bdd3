//! The open-in-vm protocol against a hostile peer, both ways: the service's request reader
//! (the caller is the adversary) and the client's answer reader (the disposable is).

use std::fs;
use std::path::Path;

use bulkhead_services::open::{read_answer, receive_request, Opened, MAX_OPEN_BYTES, OPEN_MAGIC};

fn request(name: &[u8], size: u64, data: &[u8]) -> Vec<u8> {
    let mut v = OPEN_MAGIC.to_vec();
    v.extend_from_slice(&(name.len() as u16).to_le_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn the_service_keeps_the_file_in_its_private_dir_whatever_the_name() {
    let base = tempfile::tempdir().unwrap();
    for (name, want) in [
        (&b"../../etc/passwd"[..], ".._.._etc_passwd"),
        (b"/abs", "_abs"),
        (b"..", "file"),
        (b"", "file"),
        (b"a\nb\x1b.txt", "a_b_.txt"),
        (b"\xff\xfe.pdf", "__.pdf"),
    ] {
        let inc = receive_request(&request(name, 3, b"abc")[..], base.path()).unwrap();
        assert_eq!(inc.name, want);
        assert_eq!(inc.path.parent(), Some(inc.dir.path()));
        assert_eq!(fs::read(&inc.path).unwrap(), b"abc");
    }
    assert!(entries(base.path()).is_empty(), "private dirs removed");
}

#[test]
fn the_service_refuses_bad_requests_and_leaves_nothing() {
    let base = tempfile::tempdir().unwrap();
    let mut bad_magic = request(b"x", 0, b"");
    bad_magic[0] = b'X';
    let mut long_name = OPEN_MAGIC.to_vec();
    long_name.extend_from_slice(&5000u16.to_le_bytes());
    long_name.extend_from_slice(&[b'a'; 5000]);
    for (bytes, want) in [
        (bad_magic, "bad magic"),
        (long_name, "name of 5000 bytes"),
        (request(b"x", MAX_OPEN_BYTES + 1, b""), "at most"),
        (request(b"x", 100, b"short"), "ended the transfer early"),
        (OPEN_MAGIC[..5].to_vec(), "ended the transfer early"),
    ] {
        let e = receive_request(&bytes[..], base.path())
            .err()
            .expect("refused");
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    }
    assert!(
        entries(base.path()).is_empty(),
        "{:?}",
        entries(base.path())
    );
}

fn answer_edited(size: u64, data: &[u8]) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn the_client_keeps_the_original_on_any_bad_answer() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.txt");
    fs::write(&doc, "mine").unwrap();
    let mut err_msg = vec![2u8];
    err_msg.extend_from_slice(&7u16.to_le_bytes());
    err_msg.extend_from_slice(b"no\x1b[2J!");
    for (bytes, accept, want) in [
        (
            answer_edited(100, b"only ten b"),
            true,
            "ended the transfer early",
        ),
        (answer_edited(0, b""), true, "empty edited file"),
        (answer_edited(MAX_OPEN_BYTES + 1, b""), true, "at most"),
        (answer_edited(3, b"new"), false, "not sent completely"),
        (vec![7u8], true, "answer code 7"),
        (vec![], true, "ended the transfer early"),
        (vec![1u8, 3, 0], true, "ended the transfer early"),
        (err_msg, true, "reported: no [2J!"),
    ] {
        let e = read_answer(&bytes[..], &doc, accept, MAX_OPEN_BYTES).expect_err(want);
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
        assert_eq!(fs::read_to_string(&doc).unwrap(), "mine");
        assert_eq!(entries(dir.path()), ["doc.txt"], "temporary file left");
    }
    assert!(matches!(
        read_answer(&[0u8][..], &doc, true, MAX_OPEN_BYTES),
        Ok(Opened::Unchanged)
    ));
    // Over the caller's limit: refused before anything is written.
    let e = read_answer(&answer_edited(4, b"newer")[..], &doc, true, 3).unwrap_err();
    assert!(e.to_string().contains("max_edited_bytes"), "{e}");
    assert_eq!(fs::read_to_string(&doc).unwrap(), "mine");
    assert_eq!(entries(dir.path()), ["doc.txt"], "temporary file left");
    let r = read_answer(&answer_edited(3, b"new")[..], &doc, true, 3);
    assert!(matches!(r, Ok(Opened::Replaced(3))), "{r:?}");
    assert_eq!(fs::read_to_string(&doc).unwrap(), "new");
    assert_eq!(entries(dir.path()), ["doc.txt"]);
}
