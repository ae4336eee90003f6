//! Unit tests of the on-disk record form.

use super::*;
use crate::{AuditRecord, MessageRecord};

fn message(body: Vec<u8>) -> NewRecord {
    NewRecord {
        time_ms: 1_700_000_000_000,
        kind: RecordKind::Message(MessageRecord {
            mail_from: "a@example.org".into(),
            rcpt_to: vec!["b@example.org".into(), "c@example.org".into()],
            message_id: Some("<x@y>".into()),
            body,
            ..Default::default()
        }),
    }
}

fn roundtrip(rec: NewRecord, min: usize) -> (BodyEncoding, usize, Record) {
    let p = prepare(rec, min, None);
    let (encoding, stored_len) = (p.encoding, p.body.len());
    let (chain, value) = p.seal(7, [3; 32]).unwrap();
    let stored = decode(7, &value).unwrap();
    assert_eq!(stored.chain, chain);
    assert_eq!(stored.expected_chain(&[3; 32]), chain);
    (encoding, stored_len, stored.into_record(None).unwrap())
}

#[test]
fn roundtrip_keeps_every_field() {
    let rec = message(b"Subject: hi\r\n\r\nhello\r\n".to_vec());
    let (enc, _, back) = roundtrip(rec.clone(), 512);
    assert_eq!(enc, BodyEncoding::Raw);
    assert_eq!(back.kind, rec.kind);
    assert_eq!(back.time_ms, rec.time_ms);
    assert_eq!(back.seq, 7);
    assert_eq!(back.prev_chain, [3; 32]);
    assert_eq!(back.body_sha256, sha256(rec.kind.body()));

    let audit = NewRecord {
        time_ms: 1,
        kind: RecordKind::Audit(AuditRecord {
            actor: "officer".into(),
            action: "search".into(),
            detail: "q=foo".into(),
        }),
    };
    let (_, _, back) = roundtrip(audit.clone(), 512);
    assert_eq!(back.kind, audit.kind);
    assert_eq!(back.body_sha256, sha256(b""));
}

#[test]
fn compresses_only_big_compressible_bodies() {
    let text = b"To: someone\r\n".repeat(200);
    let (enc, stored_len, back) = roundtrip(message(text.clone()), 512);
    assert_eq!(enc, BodyEncoding::Zstd);
    assert!(stored_len < text.len() / 2);
    assert_eq!(back.kind.body(), text.as_slice());

    // Same body but below the threshold stays raw.
    let (enc, _, _) = roundtrip(message(text.clone()), text.len() + 1);
    assert_eq!(enc, BodyEncoding::Raw);

    // Random bytes do not shrink by 10%: stored raw.
    let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let (enc, stored_len, back) = roundtrip(message(noise.clone()), 512);
    assert_eq!(enc, BodyEncoding::Raw);
    assert_eq!(stored_len, noise.len());
    assert_eq!(back.kind.body(), noise.as_slice());
}

#[test]
fn reused_contexts_roundtrip_many_bodies() {
    // Same thread, so the second and later calls reuse both contexts.
    for n in 0..50usize {
        let text = format!("Line {n} of a compressible body\r\n").repeat(20 + n);
        let (enc, _, back) = roundtrip(message(text.clone().into_bytes()), 512);
        assert_eq!(enc, BodyEncoding::Zstd);
        assert_eq!(back.kind.body(), text.as_bytes());
    }
}

#[test]
fn zstd_length_mismatch_is_corrupt_on_both_paths() {
    let text = b"To: someone\r\n".repeat(200);
    let (_, value) = prepare(message(text.clone()), 512, None)
        .seal(1, [0; 32])
        .unwrap();
    let good = decode(1, &value).unwrap();
    assert_eq!(good.encoding, BodyEncoding::Zstd);
    for body_len in [0, 1, text.len() as u64 - 1, text.len() as u64 + 1, u64::MAX] {
        let bad = Stored {
            body_len,
            body: good.body.clone(),
            header: good.header.clone(),
            ..decode(1, &value).unwrap()
        };
        assert!(
            matches!(
                bad.raw_body(None),
                Err(JournalError::Corrupt { seq: 1, .. })
            ),
            "body_len {body_len}"
        );
    }
    // A frame without a content size (not written by us, but legal)
    // takes the streaming path.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &text).unwrap();
    let streamed = Stored {
        body: enc.finish().unwrap(),
        header: good.header.clone(),
        ..decode(1, &value).unwrap()
    };
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&streamed.body).unwrap(),
        None
    );
    assert_eq!(streamed.raw_body(None).unwrap(), text);
}

#[test]
fn unknown_version_and_trailing_bytes_are_corrupt() {
    let (_, mut value) = prepare(message(b"x".to_vec()), 512, None)
        .seal(1, [0; 32])
        .unwrap();
    let mut bad = value.clone();
    bad[0] = 9;
    let err = decode(1, &bad).unwrap_err();
    assert!(
        err.to_string().contains("unknown record format version 9"),
        "{err}"
    );
    value.push(0);
    assert!(matches!(
        decode(1, &value),
        Err(JournalError::Corrupt { seq: 1, .. })
    ));
    assert!(matches!(
        decode(4, &[]),
        Err(JournalError::Corrupt { seq: 4, .. })
    ));
}
